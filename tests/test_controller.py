"""Controller API: requests, TRIGGER and rotation, item-6 cuts, bad input, status, threads, trigger sources."""
from __future__ import annotations

import errno
import threading

import pytest

from splitpoint import config as cfgmod
from splitpoint import hal
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.pool import CUTTING, FROZEN
from splitpoint.firmware.requests import STATE_HOLE, STATE_ZERO, Op
from splitpoint.firmware.triggers import ControlLine, SpecialLunTrigger, SpecialPathTrigger
from splitpoint.hal.ram import RamDevice
from tests.watchdog import in_child

SIZE = 256 << 10


def make(pool=3, mirror="sync", chunk="4K", extra="", lun_url=None, member_url=None, ring=4096, resync=""):
    member_url = member_url or f"ram://?size={SIZE}"
    members = ", ".join(f'"{member_url}"' for _ in range(pool))
    text = f"""
[controller]
chunk_size = "{chunk}"
digest_region = "16K"
ring_capacity = {ring}
{extra}
[resync]
{resync}
[[lun]]
name = "lun0"
url = "{lun_url or f'ram://?size={SIZE}'}"
[lun.pool]
mirror = "{mirror}"
members = [{members}]
"""
    return Controller.from_config(cfgmod.loads(text))


@pytest.fixture
def ctl():
    c = make()
    yield c
    c.close()


def pattern(n: int, v: int) -> bytes:
    return bytes([v & 0xFF]) * n


def test_write_read_trigger_and_backup(ctl):
    ctl.write("lun0", 0, pattern(4096, 1))
    t1 = ctl.trigger("lun0", "first")
    ctl.write("lun0", 0, pattern(4096, 2))
    assert (t1.id, t1.label, t1.lun) == (1, "first", "lun0")
    assert ctl.read("lun0", 0, 4096) == pattern(4096, 2)
    assert ctl.read_backup("lun0", 1, 0, 4096) == pattern(4096, 1)
    assert ctl.read_backup("lun0", "latest", 0, 4096) == pattern(4096, 1)
    [b] = ctl.backups("lun0")
    assert (b.trigger_id, b.label, b.seq, b.epoch) == (1, "first", t1.seq, 1)
    # reading a backup through the ring, as a front end does for lun0.t1
    assert ctl.read("lun0.t1", 0, 512) == pattern(512, 1)


def test_sequence_numbers_follow_submission_order(ctl):
    done = []
    seqs = [ctl.submit("lun0", Op.WRITE, i * 512, data=pattern(512, i), callback=done.append) for i in range(10)]
    seqs.append(ctl.submit("lun0", Op.TRIGGER, label="x", callback=done.append))
    while len(done) < 11:
        ctl.poll(3)
    assert seqs == list(range(seqs[0], seqs[0] + 11))
    assert [c.seq for c in done] == seqs
    assert done[-1].trigger.seq == seqs[-1]


def test_rotation_is_least_recently_active(ctl):
    pool = ctl.luns["lun0"].pools[0]
    order = [pool.active.index]
    for i in range(6):
        ctl.write("lun0", 0, pattern(512, i))
        ctl.trigger("lun0")
        order.append(pool.active.index)
    assert order == [0, 1, 2, 0, 1, 2, 0]
    ctl.settle()
    # the two frozen members hold the last two TRIGGERs
    assert [b.trigger_id for b in ctl.backups("lun0")] == [6, 5]


def test_pool_of_one_is_frozen_at_each_trigger_and_refreshed_at_the_next():
    ctl = make(pool=1)
    try:
        ctl.write("lun0", 0, pattern(4096, 1))
        ctl.trigger("lun0")
        ctl.write("lun0", 0, pattern(16384, 2))   # not mirrored: the single member holds TRIGGER 1
        assert ctl.read_backup("lun0", 1, 0, 4096) == pattern(4096, 1)
        ctl.trigger("lun0")
        pool = ctl.luns["lun0"].pools[0]
        assert pool.members[0].state == CUTTING    # refreshing to TRIGGER 2: not a backup yet
        assert ctl.backups("lun0") == []
        ctl.write("lun0", 0, pattern(16384, 3))    # copy-on-write keeps TRIGGER 2's bytes for it
        ctl.settle()
        assert [b.trigger_id for b in ctl.backups("lun0")] == [2]
        assert ctl.read_backup("lun0", 2, 0, 16384) == pattern(16384, 2)
    finally:
        ctl.close()


def test_trigger_while_resyncing_cuts_exactly_with_copy_on_write():
    # slow resync: one 4 KiB chunk per background step, none while idle polls are absent
    ctl = make(pool=3, resync='rate = "4K"\nslice = "4K"')
    try:
        ref = bytearray(SIZE)
        for i in range(0, SIZE, 4096):
            data = pattern(4096, i // 4096 + 1)
            ctl.write("lun0", i, data)
            ref[i:i + 4096] = data
        ctl.trigger("lun0", "t1")               # member 1 activated: every chunk pending
        snap1 = bytes(ref)
        pool = ctl.luns["lun0"].pools[0]
        assert pool.active.sweep is not None and not pool.active.sweep.done
        ctl.trigger("lun0", "t2")               # cut member 1 mid-resync
        assert pool.members[1].state == CUTTING
        assert {b.trigger_id for b in ctl.backups("lun0")} == {1}
        for i in range(0, SIZE, 8192):        # overwrite half the chunks after the cut
            ctl.write("lun0", i, pattern(4096, 0xEE))
        ctl.settle()
        assert pool.members[1].state == FROZEN
        assert ctl.read_backup("lun0", 2, 0, SIZE) == snap1   # nothing changed between t1 and t2
        assert ctl.read_backup("lun0", 1, 0, SIZE) == snap1
        assert all(r.ok for r in ctl.verify("lun0"))
    finally:
        ctl.close()


def test_incremental_resync_copies_only_changed_chunks(ctl):
    pool = ctl.luns["lun0"].pools[0]
    for i in range(0, SIZE, 4096):
        ctl.write("lun0", i, pattern(4096, 7))
    for _ in range(3):
        ctl.trigger("lun0")
    ctl.settle()                               # every member has been active and is in sync
    ctl.write("lun0", 8192, pattern(4096, 9))   # one chunk changes
    ctl.trigger("lun0")
    ctl.settle()
    # member 0 was frozen at TRIGGER 1 and reactivated at 4: chunks written since TRIGGER 1 = all of
    # the one-chunk write only, because the full writes happened before TRIGGER 1
    active = pool.active
    assert active.index == 1
    ctl.trigger("lun0")
    m = pool.active
    ctl.settle()
    assert m.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)


def test_status_reports_pool_members_and_resync_progress():
    ctl = make(pool=2, resync='rate = "4K"')
    try:
        for i in range(0, SIZE, 4096):
            ctl.write("lun0", i, pattern(4096, 3))
        ctl.trigger("lun0", "lab")
        st = ctl.status()
        lun = st["luns"][0]
        assert lun["name"] == "lun0" and lun["size"] == SIZE
        pool = lun["pools"][0]
        assert pool["mirror"] == "sync" and pool["state"] == "syncing"
        frozen, active = pool["members"]
        assert frozen["state"] == "frozen" and frozen["consistent"] and frozen["label"] == "lab"
        assert frozen["trigger_id"] == 1 and frozen["age"] >= 0
        assert active["role"] == "active" and not active["consistent"]
        assert set(active["resync"]) >= {"percent", "rate", "eta", "copied", "total"}
        assert st["queue"]["capacity"] == 4096 and st["counters"]["triggers"] == 1
        ctl.settle()
        assert ctl.status()["luns"][0]["pools"][0]["state"] == "mirroring"
    finally:
        ctl.close()


def test_allocation_reports_zero_and_data_runs(ctl):
    assert ctl.allocation("lun0", 0, SIZE) == [(0, SIZE, STATE_HOLE | STATE_ZERO)]
    ctl.write("lun0", 4096, pattern(512, 1))
    assert ctl.allocation("lun0", 0, 16384) == [(0, 4096, 3), (4096, 4096, 0), (8192, 8192, 3)]
    ctl.trim("lun0", 0, 16384)
    assert ctl.allocation("lun0", 0, 16384) == [(0, 16384, 3)]
    with pytest.raises(E.OutOfRangeError):
        ctl.allocation("lun0", SIZE - 512, 1024)


def test_verify_names_the_region_that_differs(ctl):
    ctl.write("lun0", 40960, pattern(4096, 5))
    ctl.trigger("lun0")
    ctl.settle()
    [ok] = ctl.verify("lun0")
    assert ok.ok and ok.bad_regions == []
    member = ctl.luns["lun0"].pools[0].members[0]
    member.device.write(32768 + 512, pattern(512, 0x55))   # corrupt the frozen copy behind the controller's back
    [bad] = ctl.verify("lun0", 1)
    assert not bad.ok and bad.bad_regions == [(32768, 16384)]


def test_verify_of_a_digest_pending_backup_says_pending():
    # a digest taken at verify time would vouch for whatever the member holds then: nothing to compare
    ctl = make(pool=2)
    try:
        ctl.write("lun0", 0, pattern(4096, 1))
        ctl.trigger("lun0")
        m = ctl.luns["lun0"].pools[0].members[0]
        assert m.manifest.digest is None and [b.trigger_id for b in ctl.backups("lun0")] == [1]
        [r] = ctl.verify("lun0")
        assert r.pending and r.ok is None and "pending" in r.note and m.manifest.digest is None
        ctl.settle()
        [r] = ctl.verify("lun0")
        assert r.ok and not r.pending
    finally:
        ctl.close()


def test_on_backups_changed_fires_when_a_backup_appears_and_is_recycled(ctl):
    calls = []
    ctl.on_backups_changed = lambda: calls.append(len(ctl.backups("lun0")))
    ctl.trigger("lun0")
    assert calls and calls[-1] == 1
    ctl.trigger("lun0")
    ctl.trigger("lun0")    # recycles the copy of TRIGGER 1
    assert calls[-1] == 2


# -- bad input: each a specific error, and everything else keeps working ---------------------------
BAD = [
    ("zero-length write", dict(op=Op.WRITE, offset=0, data=b""), E.ZeroLengthError, errno.EINVAL),
    ("zero-length read", dict(op=Op.READ, offset=0, length=0), E.ZeroLengthError, errno.EINVAL),
    ("misaligned offset", dict(op=Op.WRITE, offset=100, data=pattern(512, 1)), E.MisalignedError, errno.EINVAL),
    ("misaligned length", dict(op=Op.WRITE, offset=0, data=pattern(100, 1)), E.MisalignedError, errno.EINVAL),
    ("write past end", dict(op=Op.WRITE, offset=SIZE - 512, data=pattern(1024, 1)), E.OutOfRangeError, errno.ENOSPC),
    ("read past end", dict(op=Op.READ, offset=SIZE, length=512), E.OutOfRangeError, errno.EINVAL),
    ("trim past end", dict(op=Op.TRIM, offset=SIZE, length=512), E.OutOfRangeError, errno.ENOSPC),
    ("negative offset", dict(op=Op.READ, offset=-512, length=512), E.OutOfRangeError, errno.EINVAL),
    ("huge length", dict(op=Op.READ, offset=0, length=1 << 40), E.OutOfRangeError, errno.EINVAL),
    ("label over 64 bytes", dict(op=Op.TRIGGER, label="x" * 65), E.LabelTooLongError, errno.EINVAL),
    ("utf-8 label over 64 bytes", dict(op=Op.TRIGGER, label="é" * 33), E.LabelTooLongError, errno.EINVAL),
    ("unknown opcode", dict(op=99), E.BadRequestError, errno.EINVAL),
    ("unknown flags", dict(op=Op.WRITE, offset=0, data=pattern(512, 1), flags=0x80), E.BadRequestError, errno.EINVAL),
    ("data length mismatch", dict(op=Op.WRITE, offset=0, length=1024, data=pattern(512, 1)),
     E.BadRequestError, errno.EINVAL),
]


@pytest.mark.parametrize("what,req,exc,code", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_its_error_and_the_controller_keeps_serving(ctl, what, req, exc, code):
    ctl.write("lun0", 0, pattern(512, 0xAB))
    done = []
    req = dict(req)
    op = req.pop("op")
    ctl.submit("lun0", op, callback=done.append, **req)
    ctl.submit("lun0", Op.WRITE, 512, data=pattern(512, 0xCD), callback=done.append)  # same batch, after it
    while len(done) < 2:
        ctl.poll()
    assert isinstance(done[0].error, exc), done[0].error
    assert done[0].error.errno == code
    assert done[1].error is None
    assert ctl.read("lun0", 0, 1024) == pattern(512, 0xAB) + pattern(512, 0xCD)
    t = ctl.trigger("lun0", "still fine")
    assert ctl.read_backup("lun0", t.id, 0, 1024) == pattern(512, 0xAB) + pattern(512, 0xCD)


def test_writes_to_a_frozen_backup_are_refused(ctl):
    ctl.write("lun0", 0, pattern(512, 1))
    ctl.trigger("lun0")
    for name in ("lun0.t1", "lun0.latest"):
        with pytest.raises(E.FrozenMemberError) as info:
            ctl.write(name, 0, pattern(512, 2))
        assert info.value.errno == errno.EPERM
        with pytest.raises(E.FrozenMemberError):
            ctl.trim(name, 0, 512)
    assert ctl.read_backup("lun0", 1, 0, 512) == pattern(512, 1)
    with pytest.raises(E.NoSuchBackupError):
        ctl.read("lun0.t7", 0, 512)
    with pytest.raises(E.NoSuchBackupError):
        ctl.read_backup("lun0", 7, 0, 512)


def test_a_backup_takes_read_flush_and_cache_and_refuses_everything_else(ctl):
    ctl.write("lun0", 0, pattern(512, 1))
    ctl.trigger("lun0")
    done = []
    for op in (Op.READ, Op.FLUSH, Op.CACHE, Op.TRIGGER, Op.WRITE):
        ctl.submit("lun0.t1", op, 0, 512, pattern(512, 2) if op == Op.WRITE else None, callback=done.append)
    while len(done) < 5:
        ctl.poll()
    assert [c.error for c in done[:3]] == [None, None, None]
    assert done[0].data == pattern(512, 1)
    assert isinstance(done[3].error, E.BadRequestError) and "only READ, FLUSH and CACHE" in str(done[3].error)
    assert isinstance(done[4].error, E.FrozenMemberError)
    assert ctl.read_backup("lun0", 1, 0, 512) == pattern(512, 1)


def test_unknown_lun_and_read_only_lun():
    ctl = make(lun_url=f"ram://?size={SIZE}&readonly=1", member_url=f"ram://?size={SIZE}")
    try:
        with pytest.raises(E.NoSuchLunError):
            ctl.write("nope", 0, pattern(512, 1))
        with pytest.raises(E.ReadOnlyError) as info:
            ctl.write("lun0", 0, pattern(512, 1))
        assert info.value.errno == errno.EPERM
        assert ctl.read("lun0", 0, 512) == bytes(512)
    finally:
        ctl.close()


def test_queue_full_and_shutdown():
    ctl = make(ring=4)
    for i in range(4):
        ctl.submit("lun0", Op.WRITE, i * 512, data=pattern(512, i))
    with pytest.raises(E.QueueFullError) as info:
        ctl.submit("lun0", Op.WRITE, 0, data=pattern(512, 9))
    assert info.value.errno == errno.EAGAIN
    ctl.close()     # drains what was queued
    with pytest.raises(E.ShuttingDownError) as info:
        ctl.submit("lun0", Op.WRITE, 0, data=pattern(512, 9))
    assert info.value.errno == errno.ESHUTDOWN


def test_a_failing_callback_does_not_stop_the_controller(ctl):
    def boom(_c):
        raise RuntimeError("producer bug")
    ctl.submit("lun0", Op.WRITE, 0, data=pattern(512, 1), callback=boom)
    ctl.write("lun0", 512, pattern(512, 2))
    assert ctl.counters["callback_errors"] == 1
    assert ctl.read("lun0", 0, 1024) == pattern(512, 1) + pattern(512, 2)


def test_geometry_mismatch_and_unopenable_devices_are_refused():
    with pytest.raises(E.GeometryError, match="must match"):
        make(member_url="ram://?size=128K")
    with pytest.raises(E.DeviceOpenError, match="cannot open"):
        make(pool=1, member_url="file:///nonexistent/dir/m.img")   # one member: three would alias
    with pytest.raises(E.DeviceOpenError, match="unknown device scheme"):
        make(member_url="floppy://a")


# -- FLUSH and FUA go through to the HAL -------------------------------------------------------
class CountingDevice(RamDevice):
    """A RAM disk that counts flushes and FUA writes (registered as counting://)."""

    scheme = "counting"
    persistent = True   # stands for a disk: keeps its bytes across a restart
    instances: list = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.flushes = 0
        self.fua = 0
        CountingDevice.instances.append(self)

    @classmethod
    def from_url(cls, url):
        return cls(SIZE, 512)

    def write(self, offset, data, fua=False):
        self.fua += bool(fua)
        super().write(offset, data, fua)

    def flush(self):
        self.flushes += 1
        super().flush()


def test_flush_and_fua_reach_the_devices():
    hal.register_backend("counting", f"{__name__}:CountingDevice")
    CountingDevice.instances.clear()
    ctl = make(pool=2, lun_url="counting://p", member_url="counting://m")
    try:
        primary = CountingDevice.instances[0]
        ctl.write("lun0", 0, pattern(512, 1), fua=True)
        ctl.flush("lun0")
        assert primary.fua == 1 and primary.flushes == 1
        active = ctl.luns["lun0"].pools[0].active.device
        assert active.fua == 1 and active.flushes == 1   # the mirror keeps the host's durability asks
    finally:
        ctl.close()


# -- owner thread ------------------------------------------------------------------------------
@in_child(deadline=120)
def test_owner_thread_serves_blocking_calls_from_other_threads(ctl):
    ctl.start()
    try:
        errors = []

        def worker(k):
            try:
                for i in range(50):
                    ctl.write("lun0", (k * 64 + i % 64) * 512, pattern(512, k))
            except Exception as exc:   # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        t = ctl.trigger("lun0", "threaded")
        assert t.id == 1
        for k in range(4):
            assert ctl.read("lun0", k * 64 * 512, 512) == pattern(512, k)
    finally:
        ctl.stop()


# -- trigger sources ---------------------------------------------------------------------------
def test_special_lun_special_path_and_control_line(ctl):
    ctl.write("lun0", 0, pattern(512, 1))
    got = []
    SpecialLunTrigger(ctl, "lun0").write(0, b"nightly" + bytes(505), callback=got.append)
    assert SpecialLunTrigger(ctl, "lun0").write(512, b"x" * 512) is None   # not at offset 0: no TRIGGER
    SpecialPathTrigger(ctl, "lun0").write(0, pattern(512, 2), callback=got.append)
    ctl.drain()
    assert [c.trigger.label for c in got] == ["nightly", ""]
    assert ctl.read_backup("lun0", 1, 0, 512) == pattern(512, 1)
    assert ctl.read_backup("lun0", 2, 0, 512) == pattern(512, 2)   # the special path's write is in its cut
    lines = []
    control = ControlLine(ctl, "lun0")
    control.handle("TRIGGER from serial\n", lines.append)
    control.handle("PING", lines.append)
    control.handle("bogus", lines.append)
    control.handle("TRIGGER " + "y" * 65, lines.append)
    ctl.drain()
    assert lines[0] == "PONG" or lines[1] == "PONG"
    ok = [line for line in lines if line.startswith("OK ")]
    assert ok and ok[0].startswith("OK 3 seq=")
    assert any(line.startswith("ERR unknown command") for line in lines)
    assert "ERR label is 65 bytes; at most 64" in lines
    status = []
    control.handle("STATUS", status.append)
    assert status[0].startswith("{") and '"luns"' in status[0]


def test_default_configuration_runs():
    ctl = Controller.from_config(None)
    try:
        lun = ctl.luns["lun0"]
        assert lun.size == 256 << 20 and len(lun.pools[0].members) == 3
        ctl.write("lun0", (256 << 20) - 4096, pattern(4096, 1))
        t = ctl.trigger("lun0")
        assert ctl.read_backup("lun0", t.id, (256 << 20) - 4096, 4096) == pattern(4096, 1)
    finally:
        ctl.close()


# -- a failing backup device costs that backup, never the host's write ---------------------------
class FailingDevice(RamDevice):
    """A RAM disk whose writes fail once ``broken`` is set (registered as failing://)."""

    scheme = "failing"
    persistent = True   # stands for a disk: keeps its bytes across a restart
    instances: list = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.broken = False
        FailingDevice.instances.append(self)

    @classmethod
    def from_url(cls, url):
        return cls(SIZE, 512)

    def write(self, offset, data, fua=False):
        if self.broken:
            raise hal.DeviceGoneError("unplugged")
        super().write(offset, data, fua)

    def buffer(self):
        return None   # every byte goes through write(), where it can fail


def test_a_failing_member_is_marked_inconsistent_and_the_host_keeps_writing():
    hal.register_backend("failing", f"{__name__}:FailingDevice")
    FailingDevice.instances.clear()
    ctl = make(pool=3, member_url="failing://m", resync='rate = "4K"')
    try:
        m0, m1, m2 = FailingDevice.instances
        pool = ctl.luns["lun0"].pools[0]
        for i in range(0, SIZE, 4096):
            ctl.write("lun0", i, pattern(4096, 1))
        ctl.settle()                            # member 0 in sync (it started with a full resync)
        ctl.trigger("lun0")                     # member 1 active, resyncing slowly
        ctl.trigger("lun0")                     # member 1 cut mid-resync: copy-on-write pending
        assert pool.members[1].state == CUTTING
        m1.broken = True
        ctl.write("lun0", 0, pattern(4096, 2))  # copy-on-write to the broken member fails
        assert pool.members[1].state == "inconsistent"
        m2.broken = True                        # the active member breaks too
        ctl.write("lun0", 4096, pattern(4096, 3))
        assert pool.members[2].state == "inconsistent" and pool.active is None
        assert ctl.read("lun0", 0, 8192) == pattern(4096, 2) + pattern(4096, 3)
        assert [b.trigger_id for b in ctl.backups("lun0")] == [1]
        m1.broken = m2.broken = False           # replugged: resynced in full when their turn comes
        ctl.trigger("lun0")                     # no active member: the least recently active (2) takes over
        assert pool.active is pool.members[2] and pool.active.sweep.since == 0
        ctl.trigger("lun0")
        ctl.settle()
        primary = ctl.luns["lun0"].device.read(0, SIZE)
        assert [b.trigger_id for b in ctl.backups("lun0")] == [4]
        assert ctl.read_backup("lun0", 4, 0, SIZE) == primary
        assert pool.active is pool.members[0] and pool.active.device.read(0, SIZE) == primary
        assert pool.members[1].state == "inconsistent" and "device error" in pool.members[1].error
        assert all(r.ok for r in ctl.verify("lun0"))
    finally:
        ctl.close()


def test_status_is_json_and_verify_reports_progress(ctl):
    import json

    ctl.write("lun0", 0, pattern(4096, 1))
    ctl.trigger("lun0")
    json.dumps(ctl.status())
    ctl.settle()    # the digest first: verify of a digest still pending says only that
    seen = []
    [r] = ctl.verify("lun0", progress=lambda done, total: seen.append((done, total)))
    assert r.ok and seen and seen[-1] == (SIZE, SIZE)
