"""Consistency groups (invariant 5): one TRIGGER cuts LUNs on several devices at one consistent point."""
from __future__ import annotations

import threading
import time

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.group import ConsistencyGroup, GroupToken
from splitpoint.firmware.requests import Op
from tests.watchdog import in_child

SIZE = 64 << 10
BLOCK = 512
SLOTS = 64


def device(luns=("lun0",), pool=4) -> Controller:
    members = ", ".join(f'"ram://?size={SIZE}"' for _ in range(pool))
    text = '[controller]\nchunk_size = "4K"\ndigest_region = "16K"\n'
    for name in luns:
        text += f'[[lun]]\nname = "{name}"\nurl = "ram://?size={SIZE}"\n[lun.pool]\nmembers = [{members}]\n'
    return Controller.from_config(cfgmod.loads(text))


def test_acknowledgements_after_the_cut_wait_for_the_commit_but_execution_does_not():
    ctl = device()
    try:
        token = GroupToken("g")
        ctl.submit("lun0", Op.TRIGGER, label="g", group=token)
        done = []
        ctl.submit("lun0", Op.WRITE, 0, data=b"\x07" * BLOCK, callback=done.append)
        ctl.poll()
        assert done == []                                          # held...
        assert ctl.luns["lun0"].device.read(0, BLOCK) == b"\x07" * BLOCK   # ...but executed
        token.committed = True
        ctl.release(token)
        ctl.poll()
        assert len(done) == 1 and done[0].error is None
        assert ctl.read_backup("lun0", 1, 0, BLOCK) == bytes(BLOCK)   # after the cut: not in the backup
    finally:
        ctl.close()


def test_a_trigger_dequeued_after_the_commit_holds_nothing():
    ctl = device()
    try:
        token = GroupToken()
        ctl.submit("lun0", Op.TRIGGER, group=token)
        token.committed = True
        ctl.release(token)
        done = []
        ctl.submit("lun0", Op.WRITE, 0, data=b"\x01" * BLOCK, callback=done.append)
        ctl.poll()
        assert len(done) == 1
    finally:
        ctl.close()


def test_group_of_two_luns_on_one_device():
    ctl = device(("a", "b"))
    try:
        ctl.write("a", 0, b"\x01" * BLOCK)
        ctl.write("b", 0, b"\x02" * BLOCK)
        ta, tb = ConsistencyGroup([(ctl, "a"), (ctl, "b")]).trigger("both")
        assert (ta.lun, tb.lun, ta.label, tb.label) == ("a", "b", "both", "both")
        ctl.write("a", 0, b"\x03" * BLOCK)
        assert ctl.read_backup("a", ta.id, 0, BLOCK) == b"\x01" * BLOCK
        assert ctl.read_backup("b", tb.id, 0, BLOCK) == b"\x02" * BLOCK
    finally:
        ctl.close()


def _max_value(img: bytes) -> int:
    return max(int.from_bytes(img[i * BLOCK:i * BLOCK + 8], "little") for i in range(SLOTS))


@in_child(deadline=120)
def test_dependent_writes_across_two_devices():
    """A host writes A_i on device 1, waits for its ack, then writes B_i on device 2, while group
    TRIGGERs cut both: in every pair of backups, B_i present implies A_i present."""
    dev1, dev2 = device(), device()
    captured = {1: {}, 2: {}}

    def capture(n, ctl):
        def cb():
            for b in ctl.backups("lun0"):
                captured[n].setdefault(b.trigger_id, ctl.read_backup("lun0", b.trigger_id, 0, SIZE))
        return cb
    dev1.on_backups_changed = capture(1, dev1)
    dev2.on_backups_changed = capture(2, dev2)
    real_submit = dev2.submit

    def distant_submit(lun, op, *args, **kw):   # device 2 is far away: its TRIGGER arrives late
        if op == Op.TRIGGER:
            time.sleep(0.003)
        return real_submit(lun, op, *args, **kw)
    dev2.submit = distant_submit
    dev1.start()
    dev2.start()
    stop = threading.Event()
    group = ConsistencyGroup([(dev1, "lun0"), (dev2, "lun0")])

    def host():
        i = 0
        while not stop.is_set():
            i += 1
            slot = (i % SLOTS) * BLOCK
            value = i.to_bytes(8, "little") * (BLOCK // 8)
            dev1.write("lun0", slot, value)       # A_i acknowledged ...
            dev2.write("lun0", slot, value)       # ... before B_i is issued

    hosts = threading.Thread(target=host)
    hosts.start()
    try:
        for _ in range(25):
            group.trigger()
            time.sleep(0.002)
    finally:
        stop.set()
        hosts.join()
        dev1.stop()
        dev2.stop()
    try:
        dev1.settle()
        dev2.settle()
        capture(1, dev1)()
        capture(2, dev2)()
        common = sorted(set(captured[1]) & set(captured[2]))
        assert len(common) >= 10
        cuts_with_writes = 0
        for tid in common:
            a, b = _max_value(captured[1][tid]), _max_value(captured[2][tid])
            assert b <= a, f"group TRIGGER {tid}: B_{b} is in device 2's backup but A_{b} is not in device 1's"
            cuts_with_writes += a > 0
        assert cuts_with_writes >= 5
    finally:
        dev1.close()
        dev2.close()
