"""The shipped service units run foreman with its variables."""

from __future__ import annotations

import configparser
import plistlib

from foreman.config import SETTINGS
from tests.helpers import ROOT

VARIABLES = {s.env for s in SETTINGS}


def test_launchd_plist_runs_foreman_with_its_variables() -> None:
    with open(ROOT / "contrib/launchd/ai.foreman.plist", "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "ai.foreman"
    assert plist["ProgramArguments"][0].endswith("/bin/foreman")
    assert plist["ProgramArguments"][1:] == ["serve"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] is True
    assert plist["ThrottleInterval"] > 0
    assert set(plist["EnvironmentVariables"]) <= VARIABLES
    assert "FOREMAN_OLLAMA_URL" in plist["EnvironmentVariables"]
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert "/Library/Logs/" in plist[key]


def test_systemd_unit_runs_foreman_with_its_env_file() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(ROOT / "contrib/systemd/foreman.service")
    service = unit["Service"]
    assert service["ExecStart"].split()[0].endswith("/bin/foreman")
    assert service["ExecStart"].split()[1:] == ["serve"]
    assert service["EnvironmentFile"].lstrip("-") == "/etc/foreman/foreman.env"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_env_example_names_only_real_variables() -> None:
    lines = (ROOT / "contrib/systemd/foreman.env").read_text().splitlines()
    names = {line.lstrip("#").partition("=")[0] for line in lines if "=" in line and not line.startswith("# ")}
    assert names and names <= VARIABLES
