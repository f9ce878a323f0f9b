"""Real processes for board tests: `splitpoint emulate` boards and a `splitpoint serve` using them."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


class EmulatedBoard:
    """``splitpoint emulate BOARD --link PATH`` as a child process; kill() is SIGKILL."""

    def __init__(self, workdir: str, name: str, board: str = "emu-usb-fs", rate: int = 0, faults: str | None = None,
                 size: str = "4M", seed: int = 1):
        self.link = os.path.join(workdir, name)
        self.board = board
        self.cmd = [sys.executable, "-m", "splitpoint", "emulate", board, "--link", self.link,
                    "--rate", str(rate), "--seed", str(seed), "--storage", f"ram://{name}?size={size}&block=512"]
        if faults:
            self.cmd += ["--faults", faults]
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> "EmulatedBoard":
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.link):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start: {open(self.log_path).read()[-2000:]}")
            time.sleep(0.02)
        return self

    def url(self, opts: str = "rto=0.05&retries=16") -> str:
        return f"board://{self.board}?port={self.link}&{opts}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            # a real unplug removes the device node; a killed emulator leaves its link dangling at a pty
            # number the system hands to the next pty opened (another test's control channel)
            if os.path.islink(self.link):
                os.unlink(self.link)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            self._log.close()


@pytest.fixture
def boards(tmp_path):
    """boards(**kw) starts an EmulatedBoard named board0, board1, ...; all stopped at teardown."""
    started = []

    def start(**kw):
        b = EmulatedBoard(str(tmp_path), f"board{len(started)}", **kw).start()
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def pool_config(lun_url: str, members: list[str], mirror: str = "sync", extra: str = "") -> str:
    quoted = ", ".join(f'"{m}"' for m in members)
    return (f'{extra}[[lun]]\nname = "lun0"\nurl = "{lun_url}"\n\n'
            f'[lun.pool]\nmirror = "{mirror}"\nmembers = [{quoted}]\n')
