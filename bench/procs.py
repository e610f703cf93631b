"""Child processes for the benchmark, and what /proc says about them.

Every process the benchmark starts is registered here and killed on exit
(normal end, exception, Ctrl-C, SIGTERM), with its process group, so nginx's
worker goes too. Children get their own session so that Ctrl-C in a terminal
reaches only the benchmark, which then stops them itself.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
_PR_SET_PDEATHSIG = 1

_children: list[Child] = []


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


# ---------------------------------------------------------------- the three servers


def start_target(port: int, logdir: str) -> Child:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "target.py")
    return Child("target", [sys.executable, script, "--port", str(port)], dict(os.environ), logdir)


def export_foreman(rev: str, into: str) -> str:
    """Check out foreman/ at git revision `rev` into a directory; returns that directory."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(into, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", repo, "archive", rev, "foreman"], capture_output=True, timeout=60, check=True
        )
        subprocess.run(["tar", "-x", "-C", into], input=archive.stdout, capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise StartError(f"cannot export foreman at {rev!r}: {e} {detail.decode(errors='replace').strip()}") from None
    return into


def start_foreman(
    name: str,
    port: int,
    target_port: int,
    logdir: str,
    concurrency: int,
    max_queue: int,
    source: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Child:
    """`python -m foreman`, run from `source` (a directory holding foreman/) or the working tree.

    `extra_env` (e.g. FOREMAN_CLIENT_TIMEOUT) is applied last, over the settings here.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOREMAN_")}
    env.update(
        FOREMAN_OLLAMA_URL=f"http://{HOST}:{target_port}",
        FOREMAN_LISTEN=f"{HOST}:{port}",
        FOREMAN_LOG_LEVEL="warning",
        FOREMAN_POLL_INTERVAL="1h",
        FOREMAN_CONCURRENCY=str(concurrency),
        FOREMAN_MAX_QUEUE=str(max_queue),
    )
    env.update(extra_env or {})
    cwd = source or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # `python -m` puts the working directory first on sys.path: that foreman/ wins over any installed one.
    return Child(name, [sys.executable, "-m", "foreman"], env, logdir, cwd=cwd)


NGINX_CONF = """\
worker_processes 1;
worker_rlimit_nofile 16384;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 3600s;
    upstream target {{
        server {host}:{target_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://target;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def start_nginx(nginx: str, port: int, target_port: int, logdir: str) -> Child:
    prefix = tempfile.mkdtemp(prefix="nginx-", dir=logdir)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=prefix, host=HOST, port=port, target_port=target_port))
    argv = [nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "nginx-error.log"), "-g", "daemon off;"]
    return Child("nginx", argv, dict(os.environ), logdir)


def nginx_version(nginx: str) -> str:
    try:
        out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (out.stderr or out.stdout).strip().rpartition("/")[2] or "?"


def find_or_install_nginx(log: list[str]) -> str | None:
    """The nginx binary, installing the Debian package if needed; None (with a note in `log`) if impossible."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found:
        return found
    if not shutil.which("apt-get"):
        log.append("nginx is not installed and apt-get is not available: nginx skipped")
        return None
    if os.geteuid() != 0:
        log.append("nginx is not installed and installing it needs root (apt-get install nginx-light): nginx skipped")
        return None
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Never let the package start a system nginx (it would listen on all addresses).
    guard = "/usr/sbin/policy-rc.d"
    made_guard = False
    if not os.path.exists(guard):
        with open(guard, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(guard, 0o755)
        made_guard = True
    try:
        def apt(*args: str) -> bool:
            try:
                done = subprocess.run(["apt-get", *args], env=env, capture_output=True, timeout=600, check=False)
                return done.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                return False

        print("nginx not found: installing it with apt-get ...", file=sys.stderr, flush=True)
        ok = apt("install", "-y", "nginx-light") or apt("install", "-y", "nginx")
        if not ok:
            apt("update")
            ok = apt("install", "-y", "nginx-light") or apt("install", "-y", "nginx")
    finally:
        if made_guard:
            os.unlink(guard)
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not ok or not found:
        log.append("nginx is not installed and apt-get could not install nginx-light or nginx: nginx skipped")
        return None
    log.append("nginx was installed by this run (apt-get install nginx-light)")
    return found
