"""The stand-in Ollama (foreman.stub), route family by route family, over real sockets."""
