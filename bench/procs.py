"""Child processes for the benchmarks (run.py, soak.py, queue_cost.py), and what /proc says about them.

Every process a benchmark starts is registered here and killed on exit
(normal end, exception, Ctrl-C, SIGTERM), with its process group, so nginx's
worker goes too. Children get their own session so that Ctrl-C in a terminal
reaches only the benchmark, which then stops them itself. `run_with_children`
is the frame every benchmark's main runs in; the `start_*` functions start a
server on a free loopback port and return once it answers.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

HOST = "127.0.0.1"
BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_PR_SET_PDEATHSIG = 1

_children: list[Child] = []
T = TypeVar("T")


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- /proc


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system) of the processes, summed.

    From each thread's /proc/<pid>/task/<tid>/schedstat (nanoseconds) where the
    kernel provides it; /proc/<pid>/stat utime+stime counts in clock ticks
    (10 ms), too coarse for nginx relaying 20,000 chunks in ~15 ms of CPU.
    """
    return sum(_cpu_one(pid) for pid in pids)


def _cpu_one(pid: int) -> float:
    if CPU_SOURCE == "schedstat":
        total = 0
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            return 0.0
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total / 1e9
    return stat_cpu_seconds(pid)


def stat_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _schedstat_works() -> bool:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat") as f:
            return int(f.read().split()[0]) > 0
    except (OSError, ValueError, IndexError):
        return False


CPU_SOURCE = "schedstat" if _schedstat_works() else "stat"


def status_kib(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmRSS, VmHWM); 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def rss_kib(pids: Sequence[int]) -> int:
    return sum(status_kib(pid, "VmRSS") for pid in pids)


def peak_rss_kib(pids: Sequence[int]) -> int:
    return sum(status_kib(pid, "VmHWM") for pid in pids)


def open_fds(pid: int) -> int:
    """How many file descriptors the process has open (sockets included); 0 if it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, PermissionError):
        return 0


TCP_ESTABLISHED = 1


def tcp_peers(port: int) -> dict[int, tuple[int, int]]:
    """The TCP connections of a server on 127.0.0.1:`port`: peer port -> (state, bytes in its send queue).

    From /proc/net/tcp, i.e. the server's own side of each connection (state 1
    is ESTABLISHED). A connection the server has closed leaves ESTABLISHED
    (FIN_WAIT1 while the client has not read what was sent, or gone after a
    reset) even when the client, not reading, cannot see it yet; bytes in the
    send queue say the server has begun writing to a client that does not read.
    """
    local = f"0100007F:{port:04X}"
    peers: dict[int, tuple[int, int]] = {}
    try:
        with open("/proc/net/tcp") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[1] == local:
                    peer = int(fields[2].rpartition(":")[2], 16)
                    peers[peer] = (int(fields[3], 16), int(fields[4].partition(":")[0], 16))
    except OSError:
        pass
    return peers


def child_pids(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return found


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- children


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the benchmark itself dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


class StartError(RuntimeError):
    """A child did not start or did not become ready."""


class Child:
    """One started process: its output goes to a log file in the run's temp dir."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: str, cwd: str | None = None):
        self.name = name
        self.argv = argv
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        try:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # No threads in the benchmark, so preexec_fn is safe here.
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        except OSError as e:
            self._log.close()
            raise StartError(f"cannot start {name} ({argv[0]}): {e}") from None
        self.pid = self.popen.pid
        _children.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The process and its children (nginx: master and worker)."""
        return [self.pid, *child_pids(self.pid)]

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def check(self) -> None:
        if not self.alive():
            code = self.popen.returncode
            hint = " (a clean exit, as after SIGTERM or SIGINT: was it signalled from outside?)" if code == 0 else ""
            raise StartError(f"{self.name} exited with code {code}{hint}; last output:\n{self.log_tail()}")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after `grace` seconds."""
        if self.alive():
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)  # our child leads its own group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(2)
        except subprocess.TimeoutExpired:
            pass
        if not self._log.closed:
            self._log.close()
        if self in _children:
            _children.remove(self)


def stop_all() -> None:
    for child in list(reversed(_children)):
        child.stop(grace=1.0)


atexit.register(stop_all)


async def wait_http_ready(child: Child, port: int, path: str, timeout: float = 30.0) -> None:
    """Poll `GET path` on the child's port until it answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        child.check()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
                data = await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()
            status = data.split(b" ", 2)[1] if data.startswith(b"HTTP/") else b"?"
            if status == b"200":
                return
            last = f"status {status.decode(errors='replace')}"
        except (TimeoutError, OSError) as e:
            last = f"{type(e).__name__}: {e}"
        await asyncio.sleep(0.05)
    raise StartError(f"{child.name} did not answer 200 on {path} within {timeout:g}s ({last}); output:\n{child.log_tail()}")


async def answering(child: Child, port: int, path: str) -> tuple[Child, int]:
    """The child and its port once `GET path` answers 200; a child that never does is stopped."""
    try:
        await wait_http_ready(child, port, path)
    except BaseException:
        child.stop()
        raise
    return child, port


# ---------------------------------------------------------------- the servers


async def start_target(logdir: str, name: str = "target") -> tuple[Child, int]:
    """bench/target.py, the fast stand-in Ollama, on a free port; `name` names its log."""
    port = free_port()
    argv = [sys.executable, os.path.join(BENCH, "target.py"), "--port", str(port)]
    return await answering(Child(name, argv, dict(os.environ), logdir), port, "/api/tags")


async def start_stub(logdir: str, chunk_delay: float, port: int | None = None) -> tuple[Child, int]:
    """`foreman stub`, the package's own stand-in Ollama, pausing `chunk_delay` s between streamed chunks."""
    port = port or free_port()
    argv = [sys.executable, "-m", "foreman", "stub", "--listen", f"{HOST}:{port}", "--chunk-delay", str(chunk_delay)]
    return await answering(Child("stub", argv, dict(os.environ), logdir, cwd=REPO), port, "/api/tags")


def export_foreman(rev: str, into: str) -> str:
    """Check out foreman/ at git revision `rev` into a directory; returns that directory."""
    os.makedirs(into, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", REPO, "archive", rev, "foreman"], capture_output=True, timeout=60, check=True
        )
        subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise StartError(f"cannot export foreman at {rev!r}: {e} {detail.decode(errors='replace').strip()}") from None
    return into


async def start_foreman(
    name: str,
    target_port: int,
    logdir: str,
    concurrency: int,
    max_queue: int,
    source: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Child, int]:
    """`python -m foreman` on a free port, run from `source` (a directory holding foreman/) or the working tree.

    Returns once /healthz answers 200 (foreman has polled the target). `extra_env`
    (e.g. FOREMAN_CLIENT_TIMEOUT) is applied last, over the settings here.
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    env.update(
        FOREMAN_OLLAMA_URL=f"http://{HOST}:{target_port}",
        FOREMAN_LISTEN=f"{HOST}:{port}",
        FOREMAN_LOG_LEVEL="warning",
        FOREMAN_POLL_INTERVAL="1h",
        FOREMAN_CONCURRENCY=str(concurrency),
        FOREMAN_MAX_QUEUE=str(max_queue),
        # The load comes from one address: one client to foreman. Its share of
        # the queue (32 by default) would refuse most of a queueing scenario.
        FOREMAN_MAX_QUEUE_PER_CLIENT=str(max(1, min(max_queue, 1_000_000))),
    )
    env.update(extra_env or {})
    # `python -m` puts the working directory first on sys.path: that foreman/ wins over any installed one.
    child = Child(name, [sys.executable, "-m", "foreman"], env, logdir, cwd=source or REPO)
    return await answering(child, port, "/healthz")


# ---------------------------------------------------------------- the frame of a benchmark


def run_with_children(label: str, main: Callable[[str], Coroutine[Any, Any, T]]) -> T:
    """`main(logdir)` in a fresh event loop, with a temporary directory for the children's logs.

    Every child is stopped at the end, however it comes. SIGTERM is taken as
    Ctrl-C (exit 130); a child that does not start ends the run with one line
    on stderr and exit 1.
    """
    raise_open_file_limit()

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    with tempfile.TemporaryDirectory(prefix=f"foreman-{label}-") as logdir:
        try:
            return asyncio.run(main(logdir))
        except StartError as e:
            print(f"{label}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            print(f"{label}: interrupted; child processes stopped", file=sys.stderr)
            raise SystemExit(130) from None
        finally:
            stop_all()
