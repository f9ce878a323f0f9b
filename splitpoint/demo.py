"""The demo of `make demo`, and ``ServerProcess``: `splitpoint serve` run as a real child process.

``ServerProcess`` starts ``python -m splitpoint serve`` in a work directory, waits for its
``ready`` line, knows its NBD endpoint and control channel, and stops it by pid (SIGTERM, then
SIGKILL only if it does not exit). The demo, the real-client tests and the benchmarks use it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


class ServerError(RuntimeError):
    """`splitpoint serve` did not start, or did not stop cleanly."""


class ServerProcess:
    """``splitpoint serve`` as a child process, on a Unix socket (default) or TCP."""

    def __init__(self, workdir: str, *, config: str | None = None, tcp: str | None = None, unix: bool = True,
                 extra_args=(), cpu: int | None = None, env: dict | None = None):
        self.workdir = workdir
        self.config = config
        self.tcp = tcp
        self.unix = unix
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.env = env
        self.socket = os.path.join(workdir, "nbd.sock") if unix else None
        self.control = os.path.join(workdir, "control")
        self.endpoints: list[str] = []
        self.output: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "splitpoint", "serve", "--control-link", self.control]
        if self.config:
            cmd += ["--config", self.config]
        if self.socket:
            cmd += ["--socket", self.socket]
        if self.tcp:
            cmd += ["--listen", self.tcp]
        cmd += self.extra_args
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu)] + cmd
        return cmd

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        os.makedirs(self.workdir, exist_ok=True)
        self._stderr = open(os.path.join(self.workdir, "serve.log"), "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=self._stderr,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                self.output.append(line)
                if line.startswith("NBD: "):
                    self.endpoints.append(line[5:])
                if line.startswith("ready"):
                    ready.set()
            ready.set()
        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            self.stop(timeout=5)
            raise ServerError(f"splitpoint serve did not start: {self.log()[-2000:]}")
        return self

    def log(self) -> str:
        self._stderr.flush()
        with open(os.path.join(self.workdir, "serve.log")) as fh:
            return "\n".join(self.output) + "\n" + fh.read()

    def uri(self, export: str = "lun0") -> str:
        """An NBD URI of ``export`` that qemu, libnbd and fio all take."""
        if self.socket:
            return f"nbd+unix:///{export}?socket={self.socket}"
        tcp = next(e for e in self.endpoints if e.startswith("nbd://"))
        return f"{tcp}/{export}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait; SIGKILL after ``timeout``. Returns its exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._stderr.close()
        self.returncode = self.proc.returncode
        return self.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
