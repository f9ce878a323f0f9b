"""Write intent, ordering and extent: a chunk's intent is durable before its data is written, for
every chunk a write touches, and a crash between the two leaves a restart that resyncs it.

- in process: a filter on the primary reads the intent log from disk at every data write and
  records each chunk written that the durable set does not name (or whose record is not synced);
- in process: multi-chunk writes that start off a chunk boundary, a crash (nothing persisted)
  with the member missing them, a restart: the member equals the primary;
- real processes: `splitpoint serve` with a file primary armed with ``faults=kill=1`` dies by
  SIGKILL right after the primary's pwrite of a multi-chunk write, before the mirror write; the
  restarted server resyncs those chunks and the member equals the primary.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from splitpoint import config as cfgmod
from splitpoint import pyx
from splitpoint.demo import ServerProcess
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import exchange
from splitpoint.firmware.metadata import _HEAD, IntentLog
from splitpoint.firmware.requests import Op
from splitpoint.hal.filters import DeviceFilter

SIZE = 256 << 10
CHUNK = 4096
NCHUNKS = SIZE // CHUNK
#: multi-chunk extents, each starting off a chunk boundary (offset, length)
SPANS = [(CHUNK + 1024, 5 * CHUNK), (10 * CHUNK + 512, 2 * CHUNK), (20 * CHUNK + 3584, CHUNK + 1024),
         (33 * CHUNK + 2048, 9 * CHUNK + 1024)]


def config_text(d, faults: str = "") -> str:
    members = ", ".join(f'"file://{d}/m{i}.img?size={SIZE}&create=1"' for i in range(2))
    arm = f"&faults={faults}" if faults else ""
    return f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
metadata_dir = "{d}/meta"
[[lun]]
name = "lun0"
url = "file://{d}/lun0.img?size={SIZE}&create=1{arm}"
[lun.pool]
members = [{members}]
"""


def chunks_of(offset: int, length: int) -> range:
    return range(offset // CHUNK, (offset + length - 1) // CHUNK + 1)


class SyncLedger:
    """Descriptors written with pwrite and not synced since (fdatasync or fsync)."""

    def __init__(self, monkeypatch):
        self.unsynced: set[int] = set()
        real_pwrite, real_fdatasync, real_fsync = os.pwrite, os.fdatasync, os.fsync

        def pwrite(fd, data, offset):
            self.unsynced.add(fd)
            return real_pwrite(fd, data, offset)

        def synced(real):
            def sync(fd):
                real(fd)
                self.unsynced.discard(fd)
            return sync
        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "fdatasync", synced(real_fdatasync))
        monkeypatch.setattr(os, "fsync", synced(real_fsync))


class IntentOnDiskCheck(DeviceFilter):
    """At each data write, the durable intent record must already name every chunk written."""

    def __init__(self, next_device, ctl, lun, ledger: SyncLedger):
        super().__init__(next_device, None)
        self.ctl = ctl
        self.lun = lun
        self.ledger = ledger
        self.undeclared: list[tuple[str, int]] = []   # (op, chunk) written before its intent was durable
                                                        # (chunk -1: the record was not synced yet)
        self.checked = 0

    def _check(self, what, offset, length):
        wi = self.ctl.metadata.intents[self.lun]
        if wi.log._fd in self.ledger.unsynced:   # the record is written but not yet durable
            self.undeclared.append((what, -1))
        raw = IntentLog(wi.log.path, wi.log.nbytes).read(wi.maps_generation)   # what a restart would read
        bits = None if raw is None else pyx.select("epochmap").ChunkBitmap.from_bytes(SIZE, CHUNK, raw)
        for c in chunks_of(offset, length):
            self.checked += 1
            if bits is None or not bits.test(c):
                self.undeclared.append((what, c))

    def write(self, offset, data, fua=False):
        self._check("write", offset, len(memoryview(data).cast("B")))
        self.next.write(offset, data, fua)

    def trim(self, offset, length):
        self._check("trim", offset, length)
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._check("zeroes", offset, length)
        self.next.write_zeroes(offset, length, fua)


def settled_controller(d) -> Controller:
    """A controller whose active member is in sync, with the epoch maps persisted (intent set empty)."""
    ctl = Controller.from_config(cfgmod.loads(config_text(d)))
    ctl.settle()
    ctl.write("lun0", 0, bytes(range(256)) * (SIZE // 256))
    ctl.settle()
    ctl.poll()    # an idle moment: the state record and the epoch maps are persisted
    ctl.metadata.persist_maps(ctl.luns["lun0"])
    assert ctl.status()["luns"][0]["write_intent"]["chunks"] == 0
    pool = state_record(d)["pools"][0]
    assert pool["members"][pool["active"]]["state"] == "active"   # a crash now resyncs only intent chunks
    return ctl


def test_each_chunks_intent_is_durable_before_its_data_is_written(tmp_path, monkeypatch):
    ctl = settled_controller(tmp_path)
    try:
        lun = ctl.luns["lun0"]
        ledger = SyncLedger(monkeypatch)
        check = IntentOnDiskCheck(lun.device, ctl, lun, ledger)
        lun.device = check
        active = lun.pools[0].active
        mirror_check = IntentOnDiskCheck(active.device, ctl, lun, ledger)   # and before the mirror write
        active.device = mirror_check
        # single requests, then one batch holding several (one intent update covers the batch)
        for i, (off, ln) in enumerate(SPANS[:2]):
            ctl.write("lun0", off, bytes([0x40 + i]) * ln)
        ctl.metadata.persist_maps(lun)
        done = []
        (o1, l1), (o2, l2), (o3, l3) = SPANS[1], SPANS[2], SPANS[3]
        ctl.submit("lun0", Op.WRITE, o1, data=b"\x51" * l1, callback=done.append)
        ctl.submit("lun0", Op.TRIM, o2, l2, callback=done.append)
        ctl.submit("lun0", Op.WRITE_ZEROES, o3, l3, callback=done.append)
        while len(done) < 3:
            ctl.poll()
        assert all(c.error is None for c in done)
        expect = sum(len(chunks_of(o, n)) for o, n in SPANS[:2] + SPANS[1:])
        assert check.checked == expect and mirror_check.checked == expect
        assert check.undeclared == [], f"data written before its chunk's intent was durable: {check.undeclared}"
        assert mirror_check.undeclared == [], \
            f"mirror written before the chunk's intent was durable: {mirror_check.undeclared}"
    finally:
        ctl.close()


def test_multi_chunk_writes_off_a_boundary_are_resynced_after_a_crash(tmp_path):
    ctl = settled_controller(tmp_path)
    pool = ctl.luns["lun0"].pools[0]
    active = pool.active.index
    for i, (off, ln) in enumerate(SPANS):
        ctl.write("lun0", off, bytes([0x60 + i]) * ln)
    ctl._close_devices()   # as a kill -9: nothing persisted, no CLEAN flag
    # the member missed the writes: they were in flight to it at the crash
    with open(tmp_path / f"m{active}.img", "r+b") as fh:
        for off, ln in SPANS:
            fh.seek(off)
            fh.write(bytes(ln))
    ctl = Controller.from_config(cfgmod.loads(config_text(tmp_path)))
    try:
        assert ctl.recovered == "crash"
        m = ctl.luns["lun0"].pools[0].active
        assert m.index == active
        ctl.settle()
        primary = ctl.luns["lun0"].device.read(0, SIZE)
        for i, (off, ln) in enumerate(SPANS):
            assert primary[off:off + ln] == bytes([0x60 + i]) * ln
        differ = [c for c in range(NCHUNKS)
                  if m.device.read(c * CHUNK, CHUNK) != primary[c * CHUNK:(c + 1) * CHUNK]]
        assert differ == [], f"chunks {differ} of the active member differ from the primary after recovery"
    finally:
        ctl.close()


# -- real processes: kill -9 between the primary's write and the mirror's -----------------------------

def state_record(d) -> dict | None:
    """The persisted state record of lun0, as the next start will read it (None while absent)."""
    try:
        with open(os.path.join(d, "meta", "lun0.state"), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    klen = _HEAD.unpack_from(raw)[2]
    return json.loads(raw[_HEAD.size + klen:])


def wait_for(what, pred, timeout=60.0):
    """Poll ``pred`` until true; the deadline only ends a hung test."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def active_in_sync(server) -> bool:
    pool = json.loads(exchange(server.control, "STATUS", 10))["luns"][0]["pools"][0]
    return pool["members"][pool["active"]]["state"] == "active" if pool.get("active") is not None else False


def test_sigkill_between_the_primary_write_and_the_mirror_write_resyncs_the_chunks(tmp_path):
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed (make test installs it)")
    d = str(tmp_path)
    with open(tmp_path / "lun0.img", "wb") as fh:   # a primary with data: the first sync copies it
        fh.write(bytes(range(256)) * (SIZE // 256))
    cfg = tmp_path / "serve.toml"
    cfg.write_text(config_text(d, faults="kill=1"))   # the first host write kills the server
    server = ServerProcess(str(tmp_path / "run1"), config=str(cfg)).start()
    try:
        def persisted_in_sync():
            doc = state_record(d)
            pool = doc and doc["pools"][0]
            return bool(pool) and pool["active"] is not None and \
                pool["members"][pool["active"]]["state"] == "active"
        wait_for("the active member in sync in the persisted state", persisted_in_sync)
        assert json.loads(exchange(server.control, "STATUS", 10))["luns"][0]["write_intent"]["chunks"] == 0
        active = state_record(d)["pools"][0]["active"]
        off, ln = SPANS[0]
        got = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x77 {off} {ln}", server.uri("lun0")],
                             capture_output=True, text=True, timeout=60)
        assert server.proc.wait(30) == -9, f"the kill filter did not fire: {got.stdout}{got.stderr}"
    finally:
        server.stop(timeout=10)
    with open(tmp_path / "lun0.img", "rb") as fh:
        primary = fh.read()
    with open(tmp_path / f"m{active}.img", "rb") as fh:
        member = fh.read()
    assert primary[off:off + ln] == b"\x77" * ln, "the primary's pwrite did not happen before the kill"
    assert member[off:off + ln] != primary[off:off + ln], "the mirror write happened before the kill"

    cfg.write_text(config_text(d))
    server = ServerProcess(str(tmp_path / "run2"), config=str(cfg)).start()
    try:
        status = json.loads(exchange(server.control, "STATUS", 10))
        assert status["metadata"]["recovered"] == "crash"
        wait_for("the recovery resync", lambda: active_in_sync(server))
        with open(tmp_path / "lun0.img", "rb") as fh:
            primary = fh.read()
        with open(tmp_path / f"m{active}.img", "rb") as fh:
            member = fh.read()
        differ = [c for c in range(NCHUNKS) if member[c * CHUNK:(c + 1) * CHUNK] != primary[c * CHUNK:(c + 1) * CHUNK]]
        assert differ == [], f"chunks {differ} of the active member differ from the primary after recovery"
        rec = status["metadata"]["recovery"]["luns"]["lun0"]
        assert (rec["intent_chunks"] or 0) >= len(chunks_of(off, ln)), rec   # a resync of those chunks, not a full one
    finally:
        assert server.stop() == 0, server.log()
