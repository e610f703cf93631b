"""The shipped service units run foreman with its variables, hardened as documented."""

from __future__ import annotations

import configparser
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from foreman.config import SETTINGS, load, parse_duration
from tests.helpers import ROOT

VARIABLES = {s.env for s in SETTINGS}
DEFAULTS = {s.env: s.default for s in SETTINGS}
# What foreman gives in-flight streams after SIGTERM unless told otherwise;
# both units must wait longer than that before killing it.
GRACE = parse_duration(DEFAULTS["FOREMAN_SHUTDOWN_GRACE"] or "")

SYSTEMD = ROOT / "contrib/systemd"
UNIT = SYSTEMD / "foreman.service"
DROP_IN = SYSTEMD / "tokens.conf"
ENV_EXAMPLE = SYSTEMD / "foreman.env"
PLIST = ROOT / "contrib/launchd/ai.foreman.plist"

# The hardening README.md promises for a network daemon that writes nothing.
HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "SystemCallFilter": "@system-service",
    "SystemCallErrorNumber": "EPERM",
    "SystemCallArchitectures": "native",
    "UMask": "0077",
}


def read_unit(path: Path) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    with open(path, encoding="utf-8") as f:
        unit.read_file(f)
    return unit


_SPAN_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def systemd_seconds(text: str) -> float:
    """Seconds in a systemd time span such as "45", "45s" or "1min 30s"."""
    parts = re.findall(r"([0-9.]+)\s*([a-z]*)", text)
    assert parts and "".join(n + u for n, u in parts) == re.sub(r"\s", "", text), text
    return sum(float(number) * _SPAN_UNITS[unit or "s"] for number, unit in parts)


# --- launchd ----------------------------------------------------------------


def load_plist() -> dict:
    with open(PLIST, "rb") as f:
        return plistlib.load(f)


def test_launchd_plist_has_exactly_the_documented_keys() -> None:
    assert set(load_plist()) == {
        "Label",
        "ProgramArguments",
        "EnvironmentVariables",
        "WorkingDirectory",
        "RunAtLoad",
        "KeepAlive",
        "ThrottleInterval",
        "ProcessType",
        "ExitTimeOut",
        "SoftResourceLimits",
        "StandardOutPath",
        "StandardErrorPath",
    }


def test_launchd_plist_runs_the_venvs_foreman_under_its_label() -> None:
    plist = load_plist()
    # launchd's convention: the file is named after the label.
    assert plist["Label"] == "ai.foreman" == PLIST.stem
    program, *args = plist["ProgramArguments"]
    assert program == "__HOME__/foreman/.venv/bin/foreman"
    assert args == ["serve"]
    # The directory the venv lives in, so a relative tokens file is found there.
    assert plist["WorkingDirectory"] == "__HOME__/foreman"
    assert program.startswith(plist["WorkingDirectory"] + "/")


def test_launchd_plist_environment_is_a_valid_foreman_config() -> None:
    env = load_plist()["EnvironmentVariables"]
    assert all(isinstance(v, str) for v in env.values())
    assert set(env) <= VARIABLES
    assert env["FOREMAN_OLLAMA_URL"] == "http://127.0.0.1:11434"
    assert env["FOREMAN_LISTEN"] == ":8080"
    load(env)  # raises ConfigError on a bad value


def test_launchd_plist_restarts_a_failed_foreman_but_not_a_stopped_one() -> None:
    plist = load_plist()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["KeepAlive"]["SuccessfulExit"] is False
    throttle = plist["ThrottleInterval"]
    assert type(throttle) is int and throttle > 0
    assert plist["ProcessType"] == "Standard"
    exit_timeout = plist["ExitTimeOut"]
    assert type(exit_timeout) is int and exit_timeout > GRACE
    files = plist["SoftResourceLimits"]["NumberOfFiles"]
    assert type(files) is int and files >= 1024


def test_launchd_plist_logs_under_library_logs() -> None:
    plist = load_plist()
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert plist[key] == "__HOME__/Library/Logs/foreman.log"


def test_launchd_plist_placeholder_is_what_readme_replaces() -> None:
    def strings(value: object) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    with_home = [s for s in strings(load_plist()) if "__HOME__" in s]
    # Each starts an absolute path that the sed line completes.
    assert len(with_home) == 4  # the program, the working directory, two logs
    assert all(
        s.startswith("__HOME__/") and s.count("__HOME__") == 1 for s in with_home
    )
    readme = (ROOT / "README.md").read_text()
    assert 'sed "s|__HOME__|$HOME|g" contrib/launchd/ai.foreman.plist' in readme


# --- systemd: the unit ------------------------------------------------------


def test_systemd_unit_runs_foreman_with_its_env_file() -> None:
    unit = read_unit(UNIT)
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/foreman/bin/foreman serve"
    assert service["EnvironmentFile"] == "-/etc/foreman/foreman.env"
    assert unit["Unit"]["After"] == "network-online.target"
    assert unit["Unit"]["Wants"] == "network-online.target"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_is_notify_reloadable_and_restarts_on_failure_only() -> None:
    service = read_unit(UNIT)["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    # Exit 2 is a bad setting: restarting would only repeat it.
    assert service["RestartPreventExitStatus"] == "2"
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert systemd_seconds(service["TimeoutStopSec"]) > GRACE
    assert service["LimitNOFILE"] == "65536"


def test_systemd_unit_is_hardened() -> None:
    service = read_unit(UNIT)["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key


def test_systemd_time_spans_are_read_as_systemd_reads_them() -> None:
    assert systemd_seconds("45") == 45
    assert systemd_seconds("45s") == 45
    assert systemd_seconds("1min 30s") == 90
    with pytest.raises(AssertionError):
        systemd_seconds("soon")


# --- systemd: the tokens drop-in --------------------------------------------


def test_systemd_drop_in_hands_each_tokens_file_over_as_a_credential() -> None:
    service = read_unit(DROP_IN)["Service"]
    assert service["LoadCredential"] == "tokens:/etc/foreman/tokens"
    assert service["Environment"] == "FOREMAN_TOKENS_FILE=%d/tokens"
    # The admin pair is there too, commented out; each pair must agree.
    lines = [line.lstrip("#") for line in DROP_IN.read_text().splitlines()]
    credentials: dict[str, str] = {}
    variables: dict[str, str] = {}
    for line in lines:
        if m := re.fullmatch(r"LoadCredential=([\w-]+):(\S+)", line):
            credentials[m[1]] = m[2]
        elif m := re.fullmatch(r"Environment=(\w+)=%d/([\w-]+)", line):
            variables[m[1]] = m[2]
    assert variables == {
        "FOREMAN_TOKENS_FILE": "tokens",
        "FOREMAN_ADMIN_TOKENS_FILE": "admin-tokens",
    }
    assert set(variables) <= VARIABLES
    assert set(credentials) == set(variables.values())
    for path in credentials.values():
        # ProtectHome= hides /home from foreman, but systemd reads the file itself.
        assert path.startswith("/etc/foreman/"), path


# --- systemd: the env example -----------------------------------------------


def env_example() -> list[tuple[bool, str, str]]:
    """(commented out, name, value) for each assignment in the example."""
    found = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        # Assignments are "NAME=value" or "#NAME=value"; prose is "# text".
        m = re.fullmatch(r"(#?)([A-Z][A-Z0-9_]*)=(.*)", line)
        if m:
            found.append((m.group(1) == "#", m.group(2), m.group(3)))
    return found


def test_systemd_env_example_lists_every_variable_once() -> None:
    names = [name for _, name, _ in env_example()]
    assert len(names) == len(set(names))
    assert set(names) == VARIABLES


def test_systemd_env_example_sets_only_defaults_and_no_secrets() -> None:
    active = {}
    for commented, name, value in env_example():
        if commented:
            # Unset by default (tokens, paths), or a default shown but not set.
            assert value in ("", DEFAULTS[name]), name
        else:
            assert DEFAULTS[name] is not None, f"{name} must stay commented out"
            assert value == DEFAULTS[name], name
            active[name] = value
    assert "FOREMAN_OLLAMA_URL" in active
    assert load(active) == load({})


# --- systemd-analyze --------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not on PATH (Debian package: systemd)",
)


def installed_copy(tmp_path: Path, *, extra: str = "") -> Path:
    """The unit and its drop-in in tmp_path, started by an executable that exists here.

    verify refuses an ExecStart= whose program is missing, and /opt/foreman
    is not installed on a test machine: run foreman with this interpreter.
    """
    text = UNIT.read_text()
    text = text.replace(
        "ExecStart=/opt/foreman/bin/foreman serve",
        f"ExecStart={sys.executable} -m foreman serve",
    )
    assert sys.executable in text
    unit = tmp_path / "foreman.service"
    unit.write_text(text + extra)
    (tmp_path / "foreman.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "foreman.service.d" / DROP_IN.name)
    return unit


def systemd_analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
    )


def complaints(stderr: str) -> list[str]:
    # verify also walks dependencies (network-online.target, ...) and may
    # warn about units of the host; only lines about ours count.
    return [line for line in stderr.splitlines() if "foreman.service" in line]


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_unit_and_drop_in(tmp_path: Path) -> None:
    result = systemd_analyze("verify", "--man=no", installed_copy(tmp_path))
    assert result.returncode == 0, result.stderr
    assert complaints(result.stderr) == []


@needs_systemd_analyze
def test_systemd_analyze_verify_would_catch_a_bad_directive(tmp_path: Path) -> None:
    # Otherwise the test above could pass without systemd reading our files.
    result = systemd_analyze(
        "verify",
        "--man=no",
        installed_copy(tmp_path, extra="\n[Service]\nProtectSystem=sideways\n"),
    )
    assert any("sideways" in line for line in complaints(result.stderr)), result.stderr


@needs_systemd_analyze
def test_systemd_analyze_security_report(tmp_path: Path) -> None:
    """For information (pytest -s shows it); the score is not asserted."""
    result = systemd_analyze(
        "security", "--offline=yes", "--no-pager", installed_copy(tmp_path)
    )
    if "--offline" in result.stderr:
        pytest.skip(
            f"this systemd-analyze cannot review a unit file offline: {result.stderr}"
        )
    overall = [
        line for line in result.stdout.splitlines() if "Overall exposure level" in line
    ]
    print("\n".join(overall) or result.stdout + result.stderr)
    assert overall, result.stdout + result.stderr


# --- README -----------------------------------------------------------------


def test_readme_names_only_shipped_contrib_files() -> None:
    readme = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"contrib/[\w./-]+\w", readme))
    assert {
        "contrib/systemd/foreman.service",
        "contrib/systemd/foreman.env",
        "contrib/systemd/tokens.conf",
        "contrib/launchd/ai.foreman.plist",
    } <= paths
    for path in paths:
        assert (ROOT / path).is_file() or (ROOT / path).is_dir(), path
