"""The docs agree with the code and stand on their own: README's variable table,
links that stay inside the repository, and a reference that names every route."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import tornado.web

from foreman.config import SETTINGS
from foreman.handlers import routes
from foreman.status import terminal
from tests.helpers import ROOT


def test_readme_table_documents_every_variable_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(FOREMAN_[A-Z_]+)` \| ([^|]+) \|", readme, re.MULTILINE))
    assert set(rows) == {s.env for s in SETTINGS}
    for setting in SETTINGS:
        shown = rows[setting.env].strip()
        expected = f"`{setting.default}`" if setting.default is not None else "unset"
        assert shown == expected, setting.env


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci/run").read_text()
    assert "test-command" in ci and "README.md" in ci
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- test-command", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    assert block.endswith("-m pytest")


def test_readme_shows_how_to_pip_install_the_distribution() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # "foreman" on the Python package index is an unrelated project.
    assert project["name"] != "foreman"
    readme = (ROOT / "README.md").read_text()
    assert f"\npip install {project['name']}\n" in readme
    # The command and the import package keep their name.
    assert project["scripts"] == {"foreman": "foreman.cli:main"}
# --- the docs stand on their own ---------------------------------------------------
#
# README.md and docs/ are everything a user or client author gets: a link that
# leaves the repository, a misspelt variable or a route missing from the
# reference leaves them guessing.

REFERENCE = ROOT / "docs" / "reference.md"
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?", re.MULTILINE)
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code(markdown: str) -> str:
    """The text that Markdown renders as prose: fenced blocks and code spans removed."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def markdown_links(markdown: str) -> list[str]:
    prose = _without_code(markdown)
    return _INLINE_LINK.findall(prose) + _LINK_DEFINITION.findall(prose)


def heading_anchors(markdown: str) -> set[str]:
    """The fragment ids GitHub gives a document's headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(_FENCE.sub("", markdown)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_the_reference_exists_and_readme_links_to_it() -> None:
    assert REFERENCE.is_file()
    assert "docs/reference.md" in markdown_links((ROOT / "README.md").read_text())


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_inside_the_repository(doc: Path) -> None:
    for target in markdown_links(doc.read_text()):
        if _SCHEME.match(target):
            assert target.split(":", 1)[0].lower() in ("http", "https", "mailto"), target
            continue
        path, _, fragment = target.partition("#")
        path = path.partition("?")[0]
        assert not path.startswith("/"), f"{doc.name}: {target} is absolute; link relative to the file"
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.is_relative_to(ROOT), f"{doc.name}: {target} leads outside the repository"
        assert linked.exists(), f"{doc.name}: {target} does not exist"
        if fragment and linked.suffix == ".md":
            assert fragment in heading_anchors(linked.read_text()), f"{doc.name}: no heading for {target}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_doc_refers_to_the_spec_beside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert "shared/SPEC.md" not in text
    assert "../shared" not in text


def test_every_variable_the_docs_name_is_a_setting() -> None:
    # `foreman status` reads two variables of its own: a shell's, not the server's.
    settings = {s.env for s in SETTINGS} | set(terminal.VARIABLES)
    for doc in doc_files():
        named = set(re.findall(r"\bFOREMAN_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
        assert named <= settings, f"{doc.name} names unknown variables: {sorted(named - settings)}"


def _served_methods(handler: type) -> set[str]:
    """The methods a handler implements itself rather than inheriting Tornado's 405."""
    return {
        method
        for method in handler.SUPPORTED_METHODS
        if getattr(handler, method.lower(), None) is not getattr(tornado.web.RequestHandler, method.lower(), None)
    }


def _route_shape(path: str) -> str:
    """A path with its variable parts blanked: `/api/blobs/([^/]+)` and `/api/blobs/{digest}` agree."""
    return re.sub(r"\{[^}]*\}", "{}", re.sub(r"\((?:[^()\\]|\\.)*\)", "{}", path.rstrip("$").lstrip("^")))


def routes_in_the_code() -> dict[str, set[str]]:
    served: dict[str, set[str]] = {}
    for entry in routes:
        pattern, handler = (entry.regex.pattern, entry.handler_class) if hasattr(entry, "regex") else entry[:2]
        served.setdefault(_route_shape(pattern), set()).update(_served_methods(handler))
    return served


def routes_in_the_reference() -> dict[str, set[str]]:
    section = REFERENCE.read_text().split("\n### Routes\n", 1)[1].split("\n#", 1)[0]
    documented: dict[str, set[str]] = {}
    for methods, path in re.findall(r"^\| ((?:`[A-Z]+`(?:, )?)+) \| `(/[^`]*)` \|", section, re.MULTILINE):
        documented.setdefault(_route_shape(path), set()).update(re.findall(r"`([A-Z]+)`", methods))
    return documented


def test_the_reference_documents_every_route_with_its_methods() -> None:
    served, documented = routes_in_the_code(), routes_in_the_reference()
    assert served.keys() - documented.keys() == set(), "routes foreman serves that the reference omits"
    assert documented.keys() - served.keys() == set(), "routes the reference lists that foreman does not serve"
    for path, methods in served.items():
        assert documented[path] == methods, path
