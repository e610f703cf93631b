"""foreman: one Ollama machine, shared."""

__version__ = "0.1.0"
