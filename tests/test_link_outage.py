"""A device link that stays down: the TRIGGERs of the outage are missed on both sides, never backups.

The primary's primary backup LUN is an asynchronous link to another `splitpoint serve`. The link
is cut and the far side made unreachable for longer than the link's reconnect bound, so the
queued requests fail and the far LUN is resynced afterwards rather than replayed. A TRIGGER
cut on the primary meanwhile could not be cut at its exact point over there: both sides' status
report it as missed, the far side exports no backup for it, and the next TRIGGER after the
resync is exact again.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from splitpoint.firmware.frontend.control import ControlClient
from test_link_serve import Writer, far_status, matching_prefix, nbdcopy, pair  # noqa: F401  (pair: the fixture)

pytestmark = pytest.mark.xdist_group("link")


def trigger(control, label):
    answer = control.ask(f"TRIGGER {label}")
    assert answer.startswith("OK "), answer
    return int(answer.split()[1])


def wait_for(what, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_triggers_of_an_outage_are_missed_on_both_sides(pair):
    near, far, px = pair("async", options="rto=0.05&reconnect=1s")
    control = ControlClient(near.control)
    writer = Writer(near.socket, pace=0.002)
    writer.start()
    try:
        lo = writer.acked
        t1 = trigger(control, "before")
        assert matching_prefix(writer, nbdcopy(far, "lun0.t1"), lo, writer.started) is not None

        px.refuse = True
        px.cut()
        time.sleep(0.3)
        t2 = trigger(control, "during")
        time.sleep(2.5)   # past reconnect=1s: what was queued for the far side has failed
        t3 = trigger(control, "still-down")
        px.refuse = False

        steady = []

        def resynced():   # the link is back, the primary backup LUN in sync and its queue empty, 3 looks running
            st = control.status()
            dev = st["devices"][0]
            ok = (dev["link"]["up"] and st["luns"][0]["backup_lun"]["state"] == "in-sync"
                  and dev["queue"]["queued_ops"] == 0)
            steady.append(ok)
            return steady[-3:] == [True] * 3
        wait_for("the primary backup LUN to resync over the link", resynced)
        lo = writer.acked
        t4 = trigger(control, "after")
        hi = writer.started
        got = nbdcopy(far, "lun0.t2")   # the far side's second cut is the primary's fourth TRIGGER
        assert matching_prefix(writer, got, lo, hi) is not None
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    assert (t1, t2, t3, t4) == (1, 2, 3, 4)

    link = far_status(far)["device_links"]["luns"][0]
    assert link["cuts"] == 2
    assert {m["id"] for m in link["missed"]} == {2, 3}
    status = control.status()
    near_missed = {m["id"] for m in status["luns"][0]["backup_lun"]["missed_cuts"]}
    for dev in status["devices"]:
        if dev["queue"] is not None:
            near_missed |= {m["id"] for m in dev["queue"]["missed_triggers"]}
    assert {2, 3} <= near_missed
    # the far side stayed up: the resync copied only what was written since its last acknowledged cut (t1)
    resync = status["luns"][0]["backup_lun"]["last_resync"]
    assert resync is not None and resync["since"] > 0, resync
    assert any(d["link"]["reconnects"] or d["link"]["gave_up"] for d in status["devices"])
    table = subprocess.run([sys.executable, "-m", "splitpoint", "status", "--control", near.control],
                           capture_output=True, text=True, timeout=60).stdout
    assert "TRIGGER(s) missed" in table or "cut(s) missed there" in table, table


#: the link's reconnect bound in the test below, and the slack a loaded 2-core machine gets on top of it
RECONNECT = 1.0
SLACK = 4.0


def test_a_dead_far_side_never_holds_up_local_writes_and_triggers(pair):
    """The far side unreachable for good: every local write and TRIGGER still completes within the
    link's reconnect bound (plus slack), and each local pool backup holds exactly the writes before it."""
    from nbd_raw import RawClient

    near, far, px = pair("async", options=f"rto=0.05&reconnect={RECONNECT:g}s")
    control = ControlClient(near.control)
    client = RawClient(near.socket).connect("lun0")
    px.refuse = True
    px.cut()
    image = bytearray(client.read(0, 1 << 20))
    slowest = 0.0
    cuts = []
    for i in range(6):
        block = bytes([i + 1]) * 65536
        offset = (i * 3 % 16) * 65536
        t0 = time.monotonic()
        reply = client.do("WRITE", offset, len(block), payload=block)
        slowest = max(slowest, time.monotonic() - t0)
        assert reply.error == 0, reply
        image[offset:offset + len(block)] = block
        t0 = time.monotonic()
        tid = trigger(control, f"dead{i}")
        slowest = max(slowest, time.monotonic() - t0)
        cuts.append((tid, bytes(image)))
        time.sleep(0.3)   # spread the ops over more than the reconnect bound: the link gives up meanwhile
    assert slowest < RECONNECT + SLACK, f"a local op waited {slowest:.2f} s on a dead link"
    st = control.status()
    local = {b["trigger_id"] for b in st["luns"][0]["backups"]}
    for tid, want in cuts[-2:]:   # the local pool of two members keeps the newest cuts
        if tid in local:
            assert nbdcopy(near, f"lun0.t{tid}")[:len(want)] == want
    assert local, st["luns"][0]["pools"]
    assert not st["devices"][0]["link"]["up"]
    px.refuse = False
