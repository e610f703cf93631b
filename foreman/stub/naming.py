"""Model names as the stand-in Ollama reads them.

The stand-in keeps its own rules rather than borrowing `foreman.names`: it
imitates Ollama on its own terms, so a mistake in foreman's resolution shows
up as a disagreement instead of being mirrored here. The steps follow
Ollama's ``types/model/name.go``: split off the tag (a ``:`` after the last
``/``), then the model, the namespace and the host (dropping a
``scheme://``), fill in what is missing from the defaults, and refuse the
name unless every part is well formed. Two valid names are one model when
their parts match case-insensitively; the scheme plays no part.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

# A part that a separator promised but that was empty ("llama3.2:"); like
# Ollama's marker, it fails validation, so such a name matches nothing.
_MISSING = "!MISSING!"

_FIRST = frozenset(string.ascii_letters + string.digits + "_")
# What may follow the first character, per part, and each part's length limit.
_REST = {
    "host": (_FIRST | frozenset("-.:"), 350),
    "namespace": (_FIRST | frozenset("-"), 80),
    "model": (_FIRST | frozenset("-."), 80),
    "tag": (_FIRST | frozenset("-."), 80),
}


@dataclass(frozen=True)
class ModelName:
    """A model name's four parts, with Ollama's defaults filled in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def valid(self) -> bool:
        """Whether Ollama would accept this name (it answers "invalid model name" otherwise)."""
        return all(_valid_part(kind, getattr(self, kind)) for kind in _REST)

    def key(self) -> tuple[str, ...]:
        """What two names must share to be one model."""
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower())

    def shortest(self) -> str:
        """The name as ``ollama list`` shows it: default host and namespace left out."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


def parse_model_name(text: str) -> ModelName:
    """`text` split into parts, defaults filled in; check `.valid` before trusting it."""
    rest = text.strip()
    tag = ""
    if rest.rfind(":") > rest.rfind("/"):  # "/" cannot be in a tag; ":" can be in a host
        rest, tag = _cut_last(rest, ":")
    if "/" not in rest:
        return ModelName(DEFAULT_HOST, DEFAULT_NAMESPACE, rest, tag or DEFAULT_TAG)
    rest, model = _cut_last(rest, "/")
    if "/" not in rest:
        return ModelName(DEFAULT_HOST, rest, model, tag or DEFAULT_TAG)
    host, namespace = _cut_last(rest, "/")
    _, scheme_found, after_scheme = host.partition("://")
    if scheme_found:  # "https://host/..." names the host; an empty one is the default
        host = after_scheme or DEFAULT_HOST
    return ModelName(host, namespace, model, tag or DEFAULT_TAG)


def same_model(requested: str, listed: str) -> bool:
    """Whether Ollama would serve inventory model `listed` for a request naming `requested`."""
    wanted, have = parse_model_name(requested), parse_model_name(listed)
    return wanted.valid and have.valid and wanted.key() == have.key()


def display_name(name: str) -> str:
    """How Ollama lists a model it pulled or created: tagged, default host/namespace dropped."""
    parsed = parse_model_name(name)
    if parsed.valid:
        return parsed.shortest()
    # Ollama would refuse the name; the stand-in takes it, tagged if need be.
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:{DEFAULT_TAG}"


def namespace_of(name: str) -> str:
    """A model name's namespace (``library`` unless given), as /v1 reports in owned_by."""
    parts = name.split("/")
    return parts[-2] if len(parts) > 1 else DEFAULT_NAMESPACE


def _cut_last(text: str, sep: str) -> tuple[str, str]:
    """Split at the last `sep`; an empty side becomes the missing-part marker."""
    before, _, after = text.rpartition(sep)
    return before or _MISSING, after or _MISSING


def _valid_part(kind: str, part: str) -> bool:
    allowed, longest = _REST[kind]
    return (
        0 < len(part) <= longest
        and part[0] in _FIRST
        and all(c in allowed for c in part[1:])
    )
