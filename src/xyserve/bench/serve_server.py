"""Start ``xyserve serve`` on a free loopback port for ``bench serve``, and read its /metrics.

Only loopback addresses are ever used: the benchmark starts its own servers on 127.0.0.1 and
refuses a ``--base-url`` that points elsewhere.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class EndpointError(RuntimeError):
    """The endpoint cannot be used: refused, unreachable or not healthy in time."""


def check_loopback(base_url: str) -> str:
    """``base_url`` without a trailing slash; anything but http(s) on loopback is refused."""
    u = urlparse(base_url)
    if u.scheme not in ("http", "https") or u.hostname not in LOOPBACK:
        raise EndpointError(
            f"--base-url {base_url!r}: only http(s) on a loopback host "
            f"({', '.join(LOOPBACK)}) is allowed"
        )
    return base_url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``/health`` until 200; a dead process or the timeout raises EndpointError."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EndpointError(f"the server exited with code {proc.returncode} before /health")
        try:
            r = httpx.get(f"{base_url}/health", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(0.25)
    raise EndpointError(f"{base_url}/health did not answer 200 within {timeout_s:.0f} s ({last})")


def scrape(base_url: str) -> dict[str, float]:
    """The ``xyserve:`` gauges and counters of /metrics, by name (no labels)."""
    r = httpx.get(f"{base_url}/metrics", timeout=5.0)
    r.raise_for_status()
    out: dict[str, float] = {}
    for line in r.text.splitlines():
        m = re.match(r"^(xyserve:[a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def leak_check(base_url: str, settle_s: float = 5.0) -> dict[str, float | bool]:
    """After a run: no request running or waiting and no KV block in use, within settle_s.

    Reads the KV usage gauge (free plus evictable prefix-cache blocks count as free), and the
    running/waiting gauges; returns them with ``clean``. A server without these metrics (a
    peer) gives ``{"clean": None}``-like output with ``checked: False``.
    """
    deadline = time.monotonic() + settle_s
    while True:
        try:
            m = scrape(base_url)
        except httpx.HTTPError:
            return {"checked": False}
        keys = ("xyserve:kv_cache_usage_perc", "xyserve:num_requests_running")
        if not all(k in m for k in keys):
            return {"checked": False}
        kv = m["xyserve:kv_cache_usage_perc"]
        running = m["xyserve:num_requests_running"]
        waiting = m.get("xyserve:num_requests_waiting", 0.0)
        clean = kv == 0 and running == 0 and waiting == 0
        if clean or time.monotonic() > deadline:
            return {
                "checked": True,
                "clean": clean,
                "kv_cache_usage_perc": kv,
                "num_requests_running": running,
                "num_requests_waiting": waiting,
            }
        time.sleep(0.2)


@dataclass
class ServerProcess:
    """``xyserve serve MODEL --host 127.0.0.1 --port P ENGINE_ARGS`` in a subprocess, or the
    command ``command_for(port)`` gives (a peer server)."""

    model: str
    engine_args: list[str] = field(default_factory=list)
    threads: int | None = None
    startup_timeout_s: float = 300.0
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    cmd: list[str] = field(default_factory=list)
    command_for: Callable[[int], list[str]] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        return self.launch().wait()

    def launch(self) -> ServerProcess:
        """Start the process without waiting (several servers can load their models at once)."""
        self.port = free_port()
        env = dict(os.environ)
        if self.threads:
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
                env[k] = str(self.threads)
        if self.command_for is not None:
            self.cmd = self.command_for(self.port)
        else:
            self.cmd = [sys.executable, "-m", "xyserve.cli", "serve", self.model]
            self.cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
            self.cmd += self.engine_args
        fd, name = tempfile.mkstemp(prefix="xyserve-bench-serve-", suffix=".log")
        self.log_path = Path(name)
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait(self) -> ServerProcess:
        """Wait for /health; on failure the process is stopped and its log tail reported."""
        try:
            wait_healthy(self.base_url, self.startup_timeout_s, self.proc)
        except EndpointError as e:
            tail = self.log_tail()
            self.stop()
            cmd = " ".join(self.cmd)
            raise EndpointError(f"{e}\ncommand: {cmd}\nserver log tail:\n{tail}") from None
        return self

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
