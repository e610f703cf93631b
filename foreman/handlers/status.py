"""/foreman/: the status document and the page that shows it.

Foreman's own routes live under /foreman/, where Ollama has none, so they
can never hide one of its routes (Ollama's are / and those under /api/ and
/v1/). The document is behind the API's tokens like /metrics; the page and
its two files hold no data, so anyone may load them, and the page asks for
a token when the document wants one.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from foreman.handlers.base import BaseHandler, ForemanError
from foreman.shown import shown
from foreman.status.document import status_document

#: the page's files, by the name they are served under
PAGE_FILES = {
    "": ("index.html", "text/html; charset=utf-8"),
    "status.js": ("status.js", "text/javascript; charset=utf-8"),
    "status.css": ("status.css", "text/css; charset=utf-8"),
}
# The page runs only its own script and style and talks only to foreman:
# whatever a client name or a model name holds stays text.
_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class OwnRoute(BaseHandler):
    """A route foreman answers itself: its CORS preflights never go to a target."""

    answers_preflights = True
    holds_body = False

    def set_default_headers(self) -> None:
        super().set_default_headers()
        # What the shared machine is doing now: never from a cache.
        self.set_header("Cache-Control", "no-store")


class StatusHandler(OwnRoute):
    """GET /foreman/status: behind the API's tokens unless FOREMAN_METRICS_PUBLIC=1."""

    @property
    def requires_auth(self) -> bool:  # type: ignore[override]
        return not self.config.metrics_public

    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(status_document(self.services), separators=(",", ":")))


class PageHandler(OwnRoute):
    """GET /foreman/ and the page's script and style sheet."""

    requires_auth = False

    def get(self, name: str) -> None:
        if name not in PAGE_FILES:
            self.fail(ForemanError(404, f"no route for GET {shown(self.request.path)}"))
            return
        file_name, content_type = PAGE_FILES[name]
        self.set_header("Content-Type", content_type)
        self.set_header("Content-Security-Policy", _CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.finish(page_file(file_name))

    def head(self, name: str) -> None:
        # Tornado sends a HEAD answer's headers (Content-Length included) without its body.
        self.get(name)


class PageRedirect(OwnRoute):
    """GET /foreman: to the page, whose relative links need the slash."""

    requires_auth = False

    def get(self) -> None:
        self.redirect("/foreman/", permanent=True)


@cache
def page_file(name: str) -> bytes:
    """One of the page's files, as the package ships it."""
    return (resources.files("foreman.status") / "page" / name).read_bytes()


routes: list[tuple[str, type[BaseHandler]]] = [
    (r"/foreman/status", StatusHandler),
    (r"/foreman", PageRedirect),
    (r"/foreman/([^/]*)", PageHandler),
]
