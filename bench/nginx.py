"""nginx, the reference proxy of bench/run.py: found or installed, configured for loopback, started."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import procs

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


async def start_nginx(nginx: str, target_port: int, logdir: str) -> tuple[procs.Child, int]:
    """nginx in front of the target on a free port, its files in a directory of its own under `logdir`."""
    port = procs.free_port()
    prefix = tempfile.mkdtemp(prefix="nginx-", dir=logdir)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=prefix, host=procs.HOST, port=port, target_port=target_port))
    argv = [nginx, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "nginx-error.log"), "-g", "daemon off;"]
    return await procs.answering(procs.Child("nginx", argv, dict(os.environ), logdir), port, "/api/tags")


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
