"""In-process rules for a member whose device lost its medium (its incarnation moved on).

The real thing, an emulated board killed and restarted, is tests/test_board_restart.py. Here a
file member is wiped and its device's incarnation bumped, as a restarted board's reconnect does,
to reach the cases a live board cannot time exactly: the loss noticed at the TRIGGER itself, on
a synchronous mirror and on an asynchronous one whose queue is already past the TRIGGER.
"""
from __future__ import annotations

import os

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import Op

SIZE = 256 << 10


def make(tmp_path, mirror: str) -> Controller:
    members = ", ".join(f'"file://{tmp_path}/b{i}.img?size={SIZE}&create=1"' for i in range(3))
    return Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
[[lun]]
name = "lun0"
url = "file://{tmp_path}/lun0.img?size={SIZE}&create=1"
[lun.pool]
mirror = "{mirror}"
members = [{members}]
"""))


def lose_medium(tmp_path, member) -> None:
    """What a board restart does to a member: its medium reads zeros, its device's incarnation grows."""
    fd = os.open(tmp_path / f"b{member.index}.img", os.O_WRONLY)
    os.pwrite(fd, bytes(SIZE), 0)
    os.close(fd)
    member.device.incarnation += 1


def test_a_frozen_member_that_lost_its_medium_is_no_backup(tmp_path):
    ctl = make(tmp_path, "sync")
    try:
        ctl.write("lun0", 0, b"\xaa" * SIZE)
        ctl.settle()
        ctl.trigger("lun0")
        ctl.settle()
        pool = ctl.luns["lun0"].pools[0]
        frozen = pool.members[0]
        lose_medium(tmp_path, frozen)
        assert ctl.backups("lun0") == []          # left out at once, even before the owner's next check
        member = ctl.status()["luns"][0]["pools"][0]["members"][0]
        assert member["state"] == "inconsistent" and "lost its medium" in member["error"]
        # recycled later, it is resynced in full, not incrementally from the zeros
        ctl.trigger("lun0")
        ctl.trigger("lun0")
        assert pool.active is frozen and frozen.sweep.since == 0
    finally:
        ctl.close()


@pytest.mark.parametrize("mirror", ["sync", "async"])
def test_an_active_member_that_lost_its_medium_is_cut_exactly_or_not_at_all(tmp_path, mirror):
    ctl = make(tmp_path, mirror)
    try:
        ctl.write("lun0", 0, b"\xaa" * SIZE)
        ctl.settle()
        pool = ctl.luns["lun0"].pools[0]
        active = pool.active
        assert active.state == "active"
        lose_medium(tmp_path, active)              # nobody looks until the TRIGGER arrives
        want = b"\xbb" * 4096 + b"\xaa" * (SIZE - 4096)
        # one batch: a write, the TRIGGER and writes after it (on an async mirror they are queued
        # behind the TRIGGER, and the source has applied them before the pool sees the TRIGGER)
        done = []
        ctl.submit("lun0", Op.WRITE, 0, data=b"\xbb" * 4096, callback=done.append)
        ctl.submit("lun0", Op.TRIGGER, callback=done.append)
        for i in range(1, 4):
            ctl.submit("lun0", Op.WRITE, i * 4096, data=b"\xcc" * 4096, callback=done.append)
        while len(done) < 5:
            ctl.poll()
        assert all(c.error is None for c in done)
        tid = done[1].trigger.id
        ctl.settle()
        if mirror == "sync":
            # the source sat exactly at the TRIGGER: cut while resyncing in full, then exact
            assert [b.trigger_id for b in ctl.backups("lun0")] == [tid]
            assert ctl.read_backup("lun0", tid, 0, SIZE) == want
            assert all(r.ok for r in ctl.verify("lun0"))
        else:
            # the source was already past the TRIGGER: that cut cannot be rebuilt and is not a backup
            assert ctl.backups("lun0") == []
            assert active.state == "inconsistent" and "lost its medium" in active.error
    finally:
        ctl.close()
