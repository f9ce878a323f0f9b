"""Block filters armed from a device URL (``faults=SPEC``), and the kill filter in a real child process."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from splitpoint.hal import BadURLError, open_device
from splitpoint.hal.filters import FaultSpecError


def test_faults_option_wraps_the_device_and_leaves_the_other_options_to_the_backend(tmp_path):
    dev = open_device(f"file://{tmp_path}/a.img?size=64K&faults=drop=1,seed=3&create=1")
    try:
        assert type(dev).__name__ == "DropWrites" and dev.size == 64 << 10 and dev.scheme == "file"
        dev.write(0, b"\x01" * 512)
        assert dev.read(0, 512) == bytes(512) and dev.count == 1   # dropped: the filter is in the path
    finally:
        dev.close()
    plain = open_device("ram://?size=64K")
    assert type(plain).__name__ == "RamDevice"


@pytest.mark.parametrize("url, exc, match", [
    ("ram://?size=64K&faults=bogus=1", FaultSpecError, "unknown fault filter 'bogus'"),
    ("ram://?size=64K&faults=kill=0", FaultSpecError, "positive whole number"),
    ("ram://?size=64K&faults=drop=1&faults=drop=1", BadURLError, "given twice"),
    ("ram://?size=64K&fault=drop=1", BadURLError, "unknown option 'fault'"),
])
def test_bad_faults_options_are_named(url, exc, match):
    with pytest.raises(exc, match=match):
        open_device(url)


def test_kill_filter_writes_then_kills_its_process(tmp_path):
    img = tmp_path / "k.img"
    child = textwrap.dedent(f"""
        from splitpoint.hal import open_device
        dev = open_device("file://{img}?size=64K&create=1&faults=kill=2")
        dev.write(0, b"\\x11" * 512)
        print("first", flush=True)
        dev.write(512, b"\\x22" * 512)
        print("survived", flush=True)
    """)
    got = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ))
    assert got.returncode == -signal.SIGKILL, got.stderr
    assert got.stdout.split() == ["first"]
    data = img.read_bytes()
    assert data[:1024] == b"\x11" * 512 + b"\x22" * 512   # the killing write reached the file first
