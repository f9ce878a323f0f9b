"""Asynchronous mirror backpressure: under a flood the queue stays within both bounds (ops and bytes),
the stall counter says so, and once settled the member is the primary byte for byte.

The flood is one batch far larger than either bound: every request's completion runs right after
its forward, so the depth each one sees is the depth the queue really reached.
"""
from __future__ import annotations

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import Op

SIZE = 1 << 20
FLOOD = 512


def flooded(queue_ops: int, queue_bytes: int, write_len: int):
    ctl = Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
ring_capacity = 1024
async_queue_ops = {queue_ops}
async_queue_bytes = {queue_bytes}
[[lun]]
name = "lun0"
url = "ram://?size={SIZE}"
[lun.pool]
mirror = "async"
members = ["ram://?size={SIZE}", "ram://?size={SIZE}"]
"""))
    path = ctl.topology.async_paths[0]
    seen = []   # (queue depth, queued bytes) right after each request was forwarded
    done = []

    def completed(c):
        done.append(c)
        seen.append((len(path.queue), path.queued_bytes))
    nslots = SIZE // write_len
    for i in range(FLOOD):
        ctl.submit("lun0", Op.WRITE, (i * 7 % nslots) * write_len, data=bytes([1 + i % 250]) * write_len,
                   callback=completed)
    ctl.submit("lun0", Op.TRIGGER, label="flood", callback=completed)
    while len(done) < FLOOD + 1:
        ctl.poll(FLOOD + 1)
    assert all(c.error is None for c in done)
    return ctl, path, seen


@pytest.mark.parametrize("queue_ops, queue_bytes, write_len", [
    (16, 64 << 20, 4096),      # the op bound is the one that binds
    (4096, 64 << 10, 8192),    # the byte bound is the one that binds
], ids=["ops", "bytes"])
def test_async_mirror_queue_is_bounded_under_a_flood(queue_ops, queue_bytes, write_len):
    ctl, path, seen = flooded(queue_ops, queue_bytes, write_len)
    try:
        deepest = max(d for d, _b in seen)
        fullest = max(b for _d, b in seen)
        assert deepest <= queue_ops, f"async queue reached {deepest} ops with async_queue_ops = {queue_ops}"
        assert fullest <= queue_bytes, f"async queue held {fullest} bytes with async_queue_bytes = {queue_bytes}"
        status = ctl.status()["luns"][0]["paths"][0]
        assert status["mode"] == "async" and status["forwarded"] == FLOOD
        assert status["stalls"] > 0 and status["stalls"] == path.stalls
        ctl.settle()
        lun = ctl.luns["lun0"]
        primary = lun.device.read(0, SIZE)
        assert ctl.read_backup("lun0", 1, 0, SIZE) == primary, "the backup cut after the flood is not the primary"
        assert lun.pools[0].active.device.read(0, SIZE) == primary
        assert all(r.ok for r in ctl.verify("lun0"))
    finally:
        ctl.close()
