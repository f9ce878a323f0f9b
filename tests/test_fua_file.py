"""FUA on file://: a FUA write or write-zeroes is on the disk before it completes; a plain one is not synced.

kill -9 keeps the page cache, so crash tests cannot see a missing fdatasync; these tests count the
sync calls made on the device's own descriptor instead."""
from __future__ import annotations

import os

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import FLAG_FUA
from splitpoint.hal import open_device

SIZE = 256 << 10


@pytest.fixture
def syncs(monkeypatch):
    """Every fd passed to os.fdatasync or os.fsync, in call order (the real call still runs)."""
    calls: list[int] = []
    for name in ("fdatasync", "fsync"):
        real = getattr(os, name)

        def counted(fd, _real=real):
            calls.append(fd)
            return _real(fd)
        monkeypatch.setattr(os, name, counted)
    return calls


def test_device_fua_write_and_write_zeroes_sync_their_descriptor(tmp_path, syncs):
    dev = open_device(f"file://{tmp_path}/d.img?size={SIZE}&block=4096&create=1")
    try:
        fd = dev._fd
        dev.write(0, b"\x11" * 4096)
        dev.write_zeroes(4096, 4096)
        assert syncs.count(fd) == 0, "a plain write or write-zeroes must not sync"
        dev.write(8192, b"\x22" * 4096, fua=True)
        assert syncs.count(fd) == 1, "a FUA write must fdatasync before it returns"
        dev.write_zeroes(12288, 8192, fua=True)
        assert syncs.count(fd) == 2, "a FUA write-zeroes must fdatasync before it returns"
        assert dev.read(8192, 4096) == b"\x22" * 4096
        assert dev.read(12288, 8192) == bytes(8192)
    finally:
        dev.close()


def _controller(d):
    return Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
metadata_dir = "{d}/meta"
[[lun]]
name = "lun0"
url = "file://{d}/lun0.img?size={SIZE}&create=1"
[lun.pool]
members = ["file://{d}/m0.img?size={SIZE}&create=1", "file://{d}/m1.img?size={SIZE}&create=1"]
"""))


def test_controller_fua_reaches_the_file_primary_before_completion(tmp_path, syncs):
    ctl = _controller(tmp_path)
    try:
        ctl.settle()
        fd = ctl.luns["lun0"].device._fd
        before = syncs.count(fd)
        ctl.write("lun0", 0, b"\x33" * 8192)
        ctl.write_zeroes("lun0", 8192, 4096)
        assert syncs.count(fd) == before, "plain writes must not sync the primary"
        ctl.write("lun0", 16384, b"\x44" * 4096, fua=True)   # returns after completion
        assert syncs.count(fd) == before + 1, "a FUA write completed without syncing the primary"
        ctl.write_zeroes("lun0", 20480, 4096, FLAG_FUA)
        assert syncs.count(fd) == before + 2, "a FUA write-zeroes completed without syncing the primary"
        assert ctl.read("lun0", 16384, 8192) == b"\x44" * 4096 + bytes(4096)
    finally:
        ctl.close()
