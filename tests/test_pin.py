"""Pins: rotation skips pinned backups; a TRIGGER with no member to rotate to is refused and cuts nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from nbd_raw import RawClient
from splitpoint import config
from splitpoint.demo import ServerProcess
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import ControlClient, exchange
from splitpoint.firmware.frontend.service import ServiceThread
from splitpoint.firmware.retention import PinnedError

MiB = 1 << 20


def ram_config(members: int) -> str:
    urls = ", ".join(f'"ram://b{i}?size=4M"' for i in range(members))
    return f"""
[[lun]]
name = "lun0"
url = "ram://lun0?size=4M"
[lun.pool]
members = [{urls}]
"""


def block(byte: int) -> bytes:
    return bytes([byte]) * 4096


@pytest.fixture
def ctl3():
    ctl = Controller.from_config(config.loads(ram_config(3)))
    yield ctl
    ctl.close()


def test_rotation_skips_a_pinned_backup(ctl3):
    ctl = ctl3
    ctl.write("lun0", 0, block(1))
    assert ctl.trigger("lun0").id == 1
    ctl.settle()
    assert ctl.pin("lun0.t1") == ["lun0.pool[0]"]
    for n in range(2, 8):   # without the pin, t1's member would be recycled at TRIGGER 3
        ctl.write("lun0", 0, block(n))
        assert ctl.trigger("lun0").id == n
        ctl.settle()
    kept = sorted(b.trigger_id for b in ctl.backups("lun0"))
    assert kept == [1, 7]
    assert ctl.read_backup("lun0", 1, 0, 4096) == block(1)
    assert ctl.read_backup("lun0", 7, 0, 4096) == block(7)
    assert ctl.pins("lun0") == ["lun0.t1"]
    status = ctl.status()["luns"][0]
    assert status["pinned"] == ["lun0.t1"]
    assert [m["pinned"] for m in status["pools"][0]["members"]] == [True, False, False]


def test_latest_names_the_newest_backup_when_pinned(ctl3):
    ctl = ctl3
    for n in (1, 2):
        ctl.write("lun0", 0, block(n))
        ctl.trigger("lun0")
        ctl.settle()
    ctl.pin("lun0.latest")
    assert ctl.pins("lun0") == ["lun0.t2"]
    ctl.unpin("lun0.t2")
    ctl.unpin("lun0.t2")   # unpinning twice is no error
    assert ctl.pins("lun0") == []


def test_no_member_to_rotate_to_refuses_the_trigger_and_cuts_nothing(ctl3):
    ctl = ctl3
    for n in (1, 2):
        ctl.write("lun0", 0, block(n))
        ctl.trigger("lun0")
        ctl.settle()
    ctl.pin("lun0.t1")
    ctl.pin("lun0.t2")
    epoch, active = ctl.luns["lun0"].epoch, ctl.luns["lun0"].pools[0].active
    with pytest.raises(PinnedError, match=r"pinned backups lun0\.t1, lun0\.t2") as info:
        ctl.trigger("lun0")
    assert "nothing was cut" in str(info.value)
    lun = ctl.luns["lun0"]
    assert lun.epoch == epoch and lun.next_trigger_id == 3 and lun.pools[0].active is active
    # the LUN still mirrors to its active member: unpin one and the next cut holds the write
    ctl.write("lun0", 0, block(9))
    ctl.unpin("lun0.t1")
    assert ctl.trigger("lun0").id == 3
    ctl.settle()
    assert ctl.read_backup("lun0", 3, 0, 4096) == block(9)
    assert sorted(b.trigger_id for b in ctl.backups("lun0")) == [2, 3]


def test_a_pool_of_one_keeps_its_pinned_backup():
    ctl = Controller.from_config(config.loads(ram_config(1)))
    try:
        ctl.write("lun0", 0, block(1))
        ctl.trigger("lun0")
        ctl.settle()
        ctl.pin("lun0.t1")
        with pytest.raises(PinnedError, match=r"lun0\.t1"):
            ctl.trigger("lun0")
        ctl.unpin("lun0.t1")
        ctl.write("lun0", 0, block(2))
        assert ctl.trigger("lun0").id == 2
        ctl.settle()
        assert ctl.read_backup("lun0", 2, 0, 4096) == block(2)
    finally:
        ctl.close()


def test_pin_of_what_is_no_backup_names_the_problem(ctl3):
    with pytest.raises(E.NoSuchBackupError, match="no consistent backup"):
        ctl3.pin("lun0.t5")
    with pytest.raises(E.NoSuchBackupError, match="names no backup"):
        ctl3.pin("nolun.t1")
    with pytest.raises(E.NoSuchBackupError, match="names no backup"):
        ctl3.pin("lun0")


@pytest.fixture
def served(tmp_path):
    link = str(tmp_path / "control")
    ctl = Controller.from_config(config.loads(ram_config(2)))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), control_link=link)
    service = thread.start()
    host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
    yield link, (host, int(port))
    thread.stop()
    assert ctl.counters["callback_errors"] == 0


def test_control_channel_pin_unpin_and_the_refused_trigger(served):
    link, addr = served
    RawClient(addr).connect("lun0").write(0, block(0x31))
    with ControlClient(link, 10) as control:
        assert control.ask("TRIGGER first").startswith("OK 1 seq=")
        assert control.ask("PIN lun0.t1") == "OK"
        assert control.ask("PIN lun0.t7").startswith("ERR LUN lun0 has no consistent backup")
        assert control.ask("PIN") .startswith("ERR PIN needs a backup name")
        refused = control.ask("TRIGGER second")
        assert refused.startswith("ERR") and "lun0.t1" in refused and "nothing was cut" in refused
        status = json.loads(control.ask("STATUS"))["luns"][0]
        assert status["pinned"] == ["lun0.t1"]
        assert [b["trigger_id"] for b in status["backups"]] == [1]
        assert control.ask("UNPIN lun0.t1") == "OK"
        assert control.ask("TRIGGER second").startswith("OK 2 seq=")
    assert RawClient(addr).connect("lun0.t2").read(0, 4096) == block(0x31)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "splitpoint", *args], capture_output=True, text=True,
                          timeout=60)


def test_pins_persist_across_a_restart_of_the_server(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "file.toml"
    urls = [f"file://{images}/{n}.img?size=4M&create=1" for n in ("lun0", "b0", "b1")]
    cfg.write_text(f"""
[controller]
metadata_dir = "{tmp_path / 'meta'}"
[[lun]]
name = "lun0"
url = "{urls[0]}"
[lun.pool]
members = {json.dumps(urls[1:])}
""")
    first = ServerProcess(str(tmp_path / "run1"), config=str(cfg)).start()
    try:
        RawClient(first.socket).connect("lun0").write(0, block(0x41))
        assert exchange(first.control, "TRIGGER keep-me", 30).startswith("OK 1")
        got = _cli("pin", "--control", first.control, "lun0.t1")
        assert got.returncode == 0 and "lun0.t1 pinned" in got.stdout, got.stderr
        RawClient(first.socket).connect("lun0").write(0, block(0x42))
    finally:
        assert first.stop() == 0, first.log()

    second = ServerProcess(str(tmp_path / "run2"), config=str(cfg)).start()
    try:
        status = json.loads(exchange(second.control, "STATUS", 30))["luns"][0]
        assert status["pinned"] == ["lun0.t1"]
        refused = exchange(second.control, "TRIGGER", 30)   # the pool's only other member is pinned
        assert refused.startswith("ERR") and "lun0.t1" in refused
        assert RawClient(second.socket).connect("lun0.t1").read(0, 4096) == block(0x41)
        got = _cli("unpin", "--control", second.control, "lun0.t1")
        assert got.returncode == 0, got.stderr
        assert exchange(second.control, "TRIGGER", 30).startswith("OK 2 ")
        assert RawClient(second.socket).connect("lun0.t2").read(0, 4096) == block(0x42)
        bad = _cli("pin", "--control", second.control, "lun0.t99")
        assert bad.returncode != 0 and "refused" in bad.stderr
    finally:
        assert second.stop() == 0, second.log()
    assert os.path.exists(images / "b0.img")
