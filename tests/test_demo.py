"""`splitpoint demo` end to end: it proves every backup, exits 0 and leaves no process behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.clients


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_demo_proves_every_backup_and_cleans_up(tmp_path):
    for tool in ("qemu-io", "qemu-img", "nbdcopy"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make demo installs it)")
    workdir = tmp_path / "demo"
    got = subprocess.run([sys.executable, "-m", "splitpoint", "demo", "--triggers", "3", "--interval", "0.2",
                          "--workdir", str(workdir)], capture_output=True, text=True, timeout=240)
    assert got.returncode == 0, got.stdout + got.stderr
    out = got.stdout
    for source in ("serial", "special LUN", "special path"):
        assert source in out
    assert out.count(" OK\n") >= 3 and "FAILED" not in out and "DIFFERS" not in out
    assert "demo: every backup is the exact point-in-time copy" in out
    assert "exit 0" in out
    assert _processes_mentioning(str(workdir)) == []
