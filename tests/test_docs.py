"""README agrees with the code: every variable documented with its default."""

from __future__ import annotations

import re
import tomllib

from foreman.config import SETTINGS
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
