"""``voicehub serve`` as a subprocess for the end-to-end benches (e2e, provider, media).

A fresh free loopback port, the log in a file beside the data directory, readiness by
polling ``/readyz``, the server's CPU seconds from ``/proc`` (so a bench reports the
server's cost per action apart from the load generator's), and a graceful stop that
warns when the log holds a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.common import REPO_ROOT

log = logging.getLogger("bench.serve")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    def __init__(self, data_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        cmd = [
            sys.executable, "-c", "from voicehub.cli import main; main()", "serve",
            "--data-dir", str(data_dir), "--port", str(self.port), "--log-level", "warning",
            *args,
        ]  # fmt: skip
        full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def wait_ready(self, timeout: float = 30.0, also: Callable[[], bool] | None = None) -> None:
        """Until ``/readyz`` answers 200 (and ``also()`` holds, when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200 and (also is None or also()):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready:\n{self.log_path.read_text()}")

    def cpu_seconds(self) -> float:
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        out = self.log_path.read_text()
        if "Traceback" in out:
            log.warning("server log has tracebacks:\n%s", out[-3000:])
