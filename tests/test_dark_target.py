"""The dark target, end to end: the stand-in's packets dropped for a minute, as a Mac asleep.

The scenario runs in a private network namespace (`unshare -n`) so the
firewall rules touch nothing but it: see tests/dark_target.py, which reports
JSON that this test checks. It needs root (CI runs as root; .ci/run installs
iptables); without root it is skipped, saying why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from foreman.inventory import POLL_TIMEOUT
from tests.dark_target import POLL_INTERVAL, tool
from tests.helpers import ROOT, subprocess_env

DARK = 60.0
# From the target's return, every request waiting for it is answered within this.
ANSWERED_WITHIN = 10.0


def _cannot_run() -> str | None:
    """Why the scenario cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root for a network namespace and iptables (CI runs it as root)"
    missing = [name for name in ("unshare", "ip", "iptables") if tool(name) is None]
    if missing:
        advice = f"{', '.join(missing)} not installed (apt-get install iptables iproute2 util-linux)"
        if os.environ.get("CI"):
            pytest.fail(advice)  # .ci/run installs them: missing in CI is a broken CI
        return advice
    try:
        probe = subprocess.run(
            [tool("unshare"), "-n", tool("iptables"), "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -n with iptables does not work here: {e}"
    if probe.returncode != 0:
        return f"unshare -n with iptables does not work here: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def report() -> dict:
    reason = _cannot_run()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        [tool("unshare"), "-n", sys.executable, "-m", "tests.dark_target", "--dark", str(DARK), "--wait-after", "20"],
        capture_output=True, text=True, timeout=DARK + 60, cwd=ROOT, env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Tracebacks in foreman's log would mean an error it did not handle.
    assert "Traceback" not in done.stderr and "Uncaught exception" not in done.stderr, done.stderr[-3000:]
    print(json.dumps(result, indent=1))  # the timings, for whoever reads the test log
    return result


def test_every_request_is_answered_soon_after_the_target_returns(report) -> None:
    requests = report["requests"]
    assert len(requests) >= 6
    for request in requests:
        assert request["status"] == 200, request
        assert request["done"], request
        assert request["answered_after_return"] <= ANSWERED_WITHIN, request
    # The first went out on connections foreman had pooled (they died in the
    # dark), the later ones on fresh connection attempts.
    assert report["pool_during_dark"]["reused"] >= 1


def test_a_stream_running_when_the_target_went_dark_ends_with_the_error_line(report) -> None:
    stream = report["stream"]
    assert "ended_after_dark" in stream, "the stream never ended"
    assert stream["ended_after_dark"] <= 35, stream
    assert stream["status"] == 200
    last = json.loads(stream["last_line"])
    assert set(last) == {"error"}, last
    assert "went dead" in last["error"]


def test_healthz_turns_degraded_in_the_dark_and_ok_on_return(report) -> None:
    assert report["healthz_degraded_after_dark"] is not None
    assert report["healthz_degraded_after_dark"] <= 15
    ok_again = report["healthz_ok_after_return"]
    assert ok_again is not None
    # One poll: the next tick, or the end of a poll that was under way.
    interval = float(POLL_INTERVAL.removesuffix("s"))
    assert ok_again <= interval + POLL_TIMEOUT + 1
