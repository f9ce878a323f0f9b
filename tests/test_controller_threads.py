"""Concurrency: producer threads submit writes while another submits TRIGGERs; the owner thread polls.

Each backup, captured the moment it becomes consistent (on the owner thread,
through on_backups_changed), must equal the replay of exactly the requests
sequenced before its TRIGGER (tests/reference.replay over the seqs recorded).
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import Op
from tests.reference import TRIGGER, WRITE, replay
from tests.watchdog import in_child

SIZE = 128 << 10
BLOCK = 512


def config(mirror: str, layout: str):
    members = ", ".join(f'"ram://?size={SIZE}"' for _ in range(4))
    text = f"""
[controller]
chunk_size = "4K"
digest_region = "32K"
ring_capacity = 256
async_queue_ops = 16
[resync]
slice = "8K"
[[lun]]
name = "lun0"
url = "ram://?size={SIZE}"
"""
    if layout == "local":
        text += f'[lun.pool]\nmirror = "{mirror}"\nmembers = [{members}]\n'
    else:
        text += (f'[lun.backup]\nurl = "ram://?size={SIZE}"\nmirror = "{mirror}"\n'
                 f'[lun.backup.pool]\nmirror = "{mirror}"\nmembers = [{members}]\n')
    return cfgmod.loads(text)


@pytest.mark.parametrize("mirror,layout", [("sync", "local"), ("async", "local"), ("async", "cascade")])
@in_child(deadline=120)
def test_producers_and_trigger_thread_each_backup_is_a_prefix(mirror, layout):
    ctl = Controller.from_config(config(mirror, layout))
    captured: dict[int, tuple[int, bytes]] = {}

    def capture():   # owner thread: read every newly consistent backup before it can be recycled
        for b in ctl.backups("lun0"):
            if b.trigger_id not in captured:
                captured[b.trigger_id] = (b.seq, ctl.read_backup("lun0", b.trigger_id, 0, SIZE))

    ctl.on_backups_changed = capture
    stream = []          # (seq, kind, offset, payload), appended from several threads
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def submit_retry(*args, **kw):
        while True:
            try:
                return ctl.submit(*args, **kw)
            except E.QueueFullError:
                time.sleep(0.0002)

    def producer(k):
        rng = random.Random(k)
        for i in range(20000):
            if stop.is_set() and i >= 200:
                break
            block = rng.randrange(SIZE // BLOCK - 8)
            data = rng.randbytes(BLOCK * rng.randrange(1, 8))

            def done(c):
                if c.error is not None:
                    errors.append(c.error)
            seq = submit_retry("lun0", Op.WRITE, block * BLOCK, data=data, callback=done)
            with lock:
                stream.append((seq, WRITE, block * BLOCK, data))

    def triggerer():
        n = 0
        while n < 30:
            seq = submit_retry("lun0", Op.TRIGGER, label=f"t{n}")
            with lock:
                stream.append((seq, TRIGGER, 0, b""))
            n += 1
            time.sleep(0.001)
        stop.set()

    ctl.start()
    try:
        threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
        trig = threading.Thread(target=triggerer)
        for t in threads + [trig]:
            t.start()
        trig.join()
        for t in threads:
            t.join()
        final = submit_retry("lun0", Op.TRIGGER, label="final")
        stream.append((final, TRIGGER, 0, b""))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(seq == final for seq, _ in captured.values()):
            time.sleep(0.01)
    finally:
        ctl.stop()
    try:
        assert not errors
        ctl.settle()
        capture()
        trigger_seqs = sorted(seq for seq, kind, _, _ in stream if kind == TRIGGER)
        write_seqs = [seq for seq, kind, _, _ in stream if kind == WRITE]
        assert sum(min(write_seqs) < seq < max(write_seqs) for seq in trigger_seqs) >= 20  # interleaved
        assert len(captured) >= 10
        assert any(seq == final for seq, _ in captured.values())
        for tid, (seq, data) in captured.items():
            assert seq == trigger_seqs[tid - 1]     # TRIGGER ids follow the sequence order
            assert data == replay(SIZE, stream, seq), f"backup of TRIGGER {tid} is not the prefix before seq {seq}"
        assert ctl.luns["lun0"].device.read(0, SIZE) == replay(SIZE, stream, 1 << 62)
    finally:
        ctl.close()


@in_child(deadline=120)
def test_owner_thread_never_sleeps_on_a_queued_request():
    """Producers that each wait for their own completion: a lost wake-up would hang one of them."""
    ctl = Controller.from_config(config("sync", "local"))
    ctl.start()
    try:
        def producer(k):
            for i in range(3000):
                ctl.write("lun0", (k * 8 + i % 8) * BLOCK, bytes([k]) * BLOCK)
        threads = [threading.Thread(target=producer, args=(k,), daemon=True) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a producer waits forever: the owner missed a wake-up"
        assert ctl.counters["writes"] == 9000
    finally:
        ctl.stop()
        ctl.close()


@in_child(deadline=120)
def test_completions_are_awaitable():
    import asyncio

    ctl = Controller.from_config(config("sync", "local"))
    ctl.start()

    async def main():
        w = await ctl.submit_future("lun0", Op.WRITE, 0, data=b"\x03" * BLOCK)
        t = await ctl.submit_future("lun0", Op.TRIGGER, label="aio")
        r = await ctl.submit_future("lun0", Op.READ, 0, BLOCK)
        return w, t, r
    try:
        w, t, r = asyncio.run(main())
        assert w.error is None and t.trigger.label == "aio" and r.data == b"\x03" * BLOCK
        assert w.seq < t.seq < r.seq
    finally:
        ctl.stop()
        ctl.close()
