"""foreman's settings: read once from the environment (and flags) into a frozen Config.

This is the only package that looks at environment variables, and even it
only sees the mapping it is handed, so tests never have to patch
``os.environ``. Every setting has a ``FOREMAN_*`` variable and a flag of the
same name; a flag overrides its variable. A bad value raises ``ConfigError``
whose message is a single line naming the variable, the bad value and what
is accepted, which the command line prints before exiting with status 2.

- ``values``: the grammar of durations, sizes, listen addresses, URLs, tokens;
- ``readers``: a setting's text to its value or a one-line ConfigError;
- ``tokens_files``: the reader of tokens files, whose lines may name their token
  and give it a weight;
- ``declare``: how a setting is declared once, and what is derived from it;
- ``settings``: the Config, whose fields declare every setting.
"""

from foreman.config.declare import Setting
from foreman.config.readers import DEFAULT_OLLAMA_URL, ConfigError
from foreman.config.settings import SETTINGS, Config, LogFormat, LogLevel, add_arguments, load
from foreman.config.values import parse_duration, parse_listen, parse_size

__all__ = [
    "DEFAULT_OLLAMA_URL",
    "SETTINGS",
    "Config",
    "ConfigError",
    "LogFormat",
    "LogLevel",
    "Setting",
    "add_arguments",
    "load",
    "parse_duration",
    "parse_listen",
    "parse_size",
]
