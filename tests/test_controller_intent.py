"""Write intent: after a crash only the chunks written since the last persisted epoch maps are resynced."""
from __future__ import annotations

import os

from splitpoint import config as cfgmod
from splitpoint import pyx
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.metadata import IntentLog

SIZE = 256 << 10
CHUNK = 4096
NCHUNKS = SIZE // CHUNK


def config(d, pool=3, resync=""):
    members = ", ".join(f'"file://{d}/m{i}.img?size={SIZE}&create=1"' for i in range(pool))
    return cfgmod.loads(f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
metadata_dir = "{d}/meta"
[resync]
{resync}
[[lun]]
name = "lun0"
url = "file://{d}/lun0.img?size={SIZE}&create=1"
[lun.pool]
members = [{members}]
""")


def crash(ctl):
    """Stop as a kill -9 would: nothing persisted, no CLEAN flag (devices released for the next open)."""
    ctl._close_devices()


def prepared(tmp_path, **kw):
    """A controller whose pool holds a proven backup (TRIGGER 1) and an active member in sync, with
    the epoch maps persisted and the intent set empty."""
    ctl = Controller.from_config(config(tmp_path, **kw))
    ctl.settle()
    for c in range(NCHUNKS):
        ctl.write("lun0", c * CHUNK, bytes([1 + c % 200]) * CHUNK)
    t1 = ctl.trigger("lun0", "one")
    ctl.settle()
    ctl.poll()      # an idle moment: the state record and the epoch maps are persisted
    assert ctl.status()["luns"][0]["write_intent"]["chunks"] == 0
    return ctl, t1


def test_recovery_resyncs_only_the_intent_chunks(tmp_path):
    ctl, t1 = prepared(tmp_path)
    pool = ctl.luns["lun0"].pools[0]
    active = pool.active.index
    written = [5, 9, 40]
    for c in written:
        ctl.write("lun0", c * CHUNK, b"\xee" * CHUNK)
    assert ctl.status()["luns"][0]["write_intent"]["chunks"] == 3
    crash(ctl)
    # the active member missed those writes in the crash (they were still in flight to it)
    with open(tmp_path / f"m{active}.img", "r+b") as fh:
        for c in written:
            fh.seek(c * CHUNK)
            fh.write(bytes(CHUNK))

    ctl = Controller.from_config(config(tmp_path))
    try:
        assert ctl.recovered == "crash"
        pool = ctl.luns["lun0"].pools[0]
        m = pool.active
        assert m.index == active and m.state == "syncing"
        assert m.sweep.pending_chunks() == 3          # not all 64
        rec = ctl.status()["metadata"]["recovery"]
        assert rec["mode"] == "crash"
        assert rec["luns"]["lun0"]["intent_chunks"] == 3
        entry = next(e for e in rec["luns"]["lun0"]["members"] if e["member"] == m.name)
        assert entry["resync_chunks"] == 3 and "write-intent" in entry["why"]
        # the proven backup stays, and its next resync stays incremental
        assert [b.trigger_id for b in ctl.backups("lun0")] == [t1.id]
        frozen = next(x for x in pool.members if x.state == "frozen")
        assert frozen.since == t1.epoch + 1
        assert all(r.ok for r in ctl.verify("lun0"))
        ctl.settle()
        assert m.state == "active"
        assert m.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
        t = ctl.trigger("lun0")
        ctl.settle()
        assert ctl.read_backup("lun0", t.id, 0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_a_member_mid_resync_keeps_its_pending_chunks_plus_the_intent_chunks(tmp_path):
    ctl, _t1 = prepared(tmp_path, pool=2, resync='rate = "4K"')
    for c in range(0, NCHUNKS, 2):
        ctl.write("lun0", c * CHUNK, b"\x22" * CHUNK)   # 32 chunks changed since TRIGGER 1
    ctl.trigger("lun0")                                  # member 0 comes back: 32 pending, rate-limited
    pool = ctl.luns["lun0"].pools[0]
    m = pool.active
    assert m.index == 0 and m.sweep is not None
    ctl.poll()
    ctl.write("lun0", 1 * CHUNK, b"\x33" * CHUNK)       # an odd chunk: not pending before
    crash(ctl)
    ctl = Controller.from_config(config(tmp_path, pool=2, resync='rate = "4K"'))
    try:
        m = ctl.luns["lun0"].pools[0].active
        assert m.index == 0 and m.state == "syncing"
        assert 1 < m.sweep.pending_chunks() < NCHUNKS   # its pending chunks and chunk 1, not everything
        assert m.sweep.pending(1, 2) == [(CHUNK, CHUNK)]
        ctl.settle()
        assert m.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_without_trusted_epoch_maps_recovery_is_a_full_resync(tmp_path):
    ctl, _t1 = prepared(tmp_path)
    ctl.write("lun0", 0, b"\x44" * CHUNK)
    crash(ctl)
    maps = tmp_path / "meta" / "lun0.maps"
    raw = bytearray(maps.read_bytes())
    raw[-1] ^= 1
    maps.write_bytes(bytes(raw))
    ctl = Controller.from_config(config(tmp_path))
    try:
        m = ctl.luns["lun0"].pools[0].active
        assert m.sweep.since == 0 and m.sweep.pending_chunks() == NCHUNKS
        rep = ctl.status()["metadata"]["recovery"]["luns"]["lun0"]
        assert "CRC" in rep["maps"] and rep["intent_chunks"] is None
        assert all(x.since == 0 for x in ctl.luns["lun0"].pools[0].members)
        ctl.settle()
        assert m.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_an_intent_log_that_cannot_be_written_makes_the_next_crash_a_full_resync(tmp_path):
    ctl, _t1 = prepared(tmp_path)
    lun = ctl.luns["lun0"]
    wi = ctl.metadata.intents[lun]

    def broken(*_a):
        raise OSError(28, "No space left on device")
    wi.log.write = broken
    ctl.write("lun0", 0, b"\x55" * CHUNK)     # still served: the maps record is gone instead
    assert "write-intent" in ctl.status()["metadata"]["error"]
    assert not (tmp_path / "meta" / "lun0.maps").exists()
    crash(ctl)
    ctl = Controller.from_config(config(tmp_path))
    try:
        m = ctl.luns["lun0"].pools[0].active
        assert m.sweep.pending_chunks() == NCHUNKS
        ctl.settle()
        assert m.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_intent_log_slots_survive_a_torn_update_and_void_with_a_newer_maps_record(tmp_path):
    em = pyx.select("epochmap")
    a = em.ChunkBitmap(SIZE, CHUNK)
    a.set_range(0, CHUNK)
    b = em.ChunkBitmap(SIZE, CHUNK)
    b.set_range(0, 3 * CHUNK)
    path = str(tmp_path / "x.intent")
    log = IntentLog(path, len(a.to_bytes()))
    log.write(7, a.to_bytes())
    log.write(7, b.to_bytes())
    log.close()
    assert IntentLog(path, log.nbytes).read(7) == b.to_bytes()
    assert IntentLog(path, log.nbytes).read(8) is None      # a newer maps record: the set is empty
    with open(path, "r+b") as fh:                           # tear the newest update
        fh.seek((log.seq % 2) * log.slot + 30)
        fh.write(b"\xff\xff")
    again = IntentLog(path, log.nbytes)
    assert again.read(7) == a.to_bytes()
    again.write(7, b.to_bytes())                            # continues after the newest sequence seen
    again.close()
    assert IntentLog(path, log.nbytes).read(7) == b.to_bytes()
    assert os.path.getsize(path) == 2 * log.slot
