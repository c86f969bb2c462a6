"""Request latency through a VIP with a real HTTP client: wrk against nginx
in a lab pod (for tests.bench.report).

nginx runs in the pod's network namespace as one process (`master_process
off`: the lab's SIGKILL then leaves no orphaned worker keeping the namespace
alive) with its config, pid, lock, logs and temp paths in a directory of the
lab; it never touches the system nginx, /var or port 80 on the host. wrk
keeps its connections alive, so it measures the per-packet path of a mode;
with `Connection: close` every request is a new connection.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

INSTALL = "apt-get install -y wrk nginx-light"
NGINX_PORT = 8081  # the lab's identity servers use 8080 and 9090
# Each wrk phase gets its own port, so its own 4-tuples: nginx closes first
# and keeps each 4-tuple in TIME_WAIT for a minute, and a new connection on
# one that another phase left there was refused or delayed (rates fell
# 5-30x: through the socket LB its SYN fails PAWS, the timestamp offset
# being derived from the address the socket was opened to, the VIP).
VIP_BACKEND_PORT = 8082  # behind the VIP
BASELINE_PORT = 8083  # direct, before any rule exists
_UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def missing() -> str | None:
    """Why the wrk row cannot run here (with the fix), or None."""
    absent = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    return f"{' and '.join(absent)} not installed ({INSTALL})" if absent else None


def nginx_conf(workdir: Path, *listen: str) -> str:
    """A self-contained nginx config: every path nginx would otherwise take
    from its build (/run, /var/lib/nginx, /var/log) is under `workdir`."""
    return f"""daemon off;
master_process off;
worker_processes 1;
pid {workdir}/nginx.pid;
lock_file {workdir}/nginx.lock;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    server {{
{"".join(f"        listen {addr};{chr(10)}" for addr in listen)}
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


def start_nginx(pod_ns: str, pod_ip: str, workdir: Path, timeout: float = 10) -> subprocess.Popen:
    """nginx serving pod_ip:NGINX_PORT in `pod_ns`, once it accepts connections.
    The caller kills it (stop()) in a finally block."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, *(f"{pod_ip}:{p}" for p in
                                          (NGINX_PORT, VIP_BACKEND_PORT, BASELINE_PORT))))
    # `ip netns exec` execs nginx (no fork): the Popen is nginx itself.
    proc = subprocess.Popen(["ip", "netns", "exec", pod_ns, "nginx", "-p", f"{workdir}/",
                             "-c", str(conf), "-e", str(workdir / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection((pod_ip, NGINX_PORT), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    stop(proc)
    err = proc.stderr.read() if proc.stderr else ""
    raise RuntimeError(f"nginx in {pod_ns} did not start: {err.strip()[-300:]}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def parse(text: str) -> dict:
    """wrk --latency output -> p50/p75/p90/p99 in microseconds, requests/s,
    requests and errors (socket errors plus non-2xx/3xx answers)."""
    pct = {f"p{q}_us": float(v) * _UNIT_US[unit] for q, v, unit in _PERCENTILE.findall(text)}
    if "p50_us" not in pct or "p99_us" not in pct:
        raise ValueError(f"no latency distribution in wrk output: {text.strip()[-200:]!r}")
    rate, requests = _RATE.search(text), _REQUESTS.search(text)
    sock, non_2xx = _SOCKET_ERRORS.search(text), _NON_2XX.search(text)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    errors += int(non_2xx[1]) if non_2xx else 0
    return {**pct, "rps": float(rate[1]) if rate else 0.0,
            "requests": int(requests[1]) if requests else 0, "errors": errors}


def run(url: str, seconds: float, threads: int, connections: int, close: bool = False
        ) -> dict:
    """One bounded wrk run (the caller's process is in the node namespace and
    the lab cgroup, so the eBPF socket hooks apply to wrk as to any client).
    `close`: every request on a new connection (nginx closes it after the
    answer): its rate is new connections/s, made by a C client. wrk takes
    whole seconds only."""
    if seconds != int(seconds) or seconds < 1:
        raise ValueError(f"wrk runs whole seconds, not {seconds}")
    cmd = ["wrk", "--latency", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s",
           "--timeout", "2s", *(["-H", "Connection: close"] if close else []), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 20, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk {url}: {(out.stderr or out.stdout).strip()[-200:]}")
    return parse(out.stdout)
