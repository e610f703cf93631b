"""Client-controlled text made safe to show: bounded in size, escaped for one line.

A model name, a path or a Host header comes from whoever connects. Put as
it is into a log line or an error message, a 60 MB name makes a 60 MB line,
and a newline followed by something that looks like a log line forges one.
"""

from __future__ import annotations

# Enough for any real model name or path; a longer one is cut, saying so.
LIMIT = 200


def bounded(text: str, limit: int = LIMIT) -> str:
    """`text` cut to `limit` characters, with an ellipsis and its full length when cut.

    For where the text is escaped by its container anyway (a JSON log record).
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def escaped(text: str) -> str:
    """`text` with control characters and other non-printables written as escapes.

    They come out as Python writes them in a literal (`\\n`, `\\x1b`,
    `\\u2028`); printable text, non-ASCII letters included, stays as it is,
    so an ordinary name reads unchanged.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def shown(text: str, limit: int = LIMIT) -> str:
    """`text` bounded and escaped: fit for a line of text a person reads."""
    head = escaped(text[:limit])
    # Escaping makes it longer; the limit is on what is shown.
    cut = len(text) > limit or len(head) > limit
    return f"{head[:limit]}… ({len(text)} characters)" if cut else head
