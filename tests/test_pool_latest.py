"""Sequence numbers continue across restarts of `splitpoint serve`, and `<lun>.latest` is the newest cut."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess


def control(server, *args) -> str:
    got = subprocess.run([sys.executable, "-m", "splitpoint", *args, "--control", server.control],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    return got.stdout


def trigger(server, label) -> tuple[int, int]:
    out = control(server, "trigger", label)
    m = re.search(r"OK (\d+) seq=(\d+)", out)
    assert m, out
    return int(m[1]), int(m[2])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["clean", "kill9"])
def test_latest_after_restart_is_the_newest_cut(tmp_path, sig):
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "file.toml"
    members = ", ".join(f'"file://{images}/b{i}.img?size=1M&create=1"' for i in range(3))
    cfg.write_text(f"""
[controller]
metadata_dir = "{tmp_path / 'meta'}"
[[lun]]
name = "lun0"
url = "file://{images}/lun0.img?size=1M&create=1"
[lun.pool]
members = [{members}]
""")
    first = ServerProcess(str(tmp_path / "run1"), config=str(cfg)).start()
    try:
        c = RawClient(first.socket).connect("lun0")
        for i in range(40):                        # seqs well past what a fresh run reaches first
            c.write(4096 * i, b"\x61" * 4096)
        assert c.do("FLUSH").error == 0
        t1, n = trigger(first, "one")
        assert t1 == 1 and n > 40
    finally:
        first.stop(sig)
    second = ServerProcess(str(tmp_path / "run2"), config=str(cfg)).start()
    try:
        c = RawClient(second.socket).connect("lun0")
        c.write(0, b"\x62" * 4096)
        assert c.do("FLUSH").error == 0
        t2, m = trigger(second, "two")
        assert t2 == 2 and m > n
        assert RawClient(second.socket).connect("lun0.latest").read(0, 4096) == b"\x62" * 4096
        if sig == signal.SIGTERM:                   # t1 was proven at the clean close and is kept
            assert RawClient(second.socket).connect("lun0.t1").read(0, 4096) == b"\x61" * 4096
    finally:
        assert second.stop() == 0, second.log()
