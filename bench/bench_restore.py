"""RESTORE after 1 % of a 1 GiB LUN changed, beside a full copy of the same backup (the peer): a
RESTORE of that backup into a second LUN of the same size, which copies every chunk through the
same path. Alternated rounds in one run; each figure is the best of its rounds. The incremental
side also mirrors every restored chunk to the pool's active member; the full copy has no pool.
"""
from __future__ import annotations

import random
import time

from splitpoint import config
from splitpoint.firmware.controller import Controller

GIB = 1 << 30
CHUNK = 64 << 10
ROUNDS = 3


def test_restore_one_percent_changed_vs_full_copy(report):
    ctl = Controller.from_config(config.loads(f"""
[controller]
chunk_size = "{CHUNK}"
[[lun]]
name = "lun0"
url = "ram://lun0?size={GIB}"
[lun.pool]
members = ["ram://b0?size={GIB}", "ram://b1?size={GIB}"]
[[lun]]
name = "lun1"
url = "ram://lun1?size={GIB}"
"""))
    try:
        rng = random.Random(1)
        block = bytes(range(256)) * (CHUNK // 256)
        for off in range(0, GIB, 1 << 24):          # a LUN with data everywhere
            ctl.write("lun0", off, block * 256)
        ctl.trigger("lun0")
        ctl.settle()
        nchunks = GIB // CHUNK
        best_inc = best_full = float("inf")
        copied = 0
        for _ in range(ROUNDS):
            for c in rng.sample(range(nchunks), nchunks // 100):
                ctl.write("lun0", c * CHUNK, b"\x5a" * CHUNK)
            t0 = time.perf_counter()
            n = ctl.restore("lun0", "lun0.t1").copied
            took = time.perf_counter() - t0
            if took < best_inc:   # later rounds copy more: chunks an earlier RESTORE wrote changed since the cut too
                best_inc, copied = took, n
            t0 = time.perf_counter()
            full = ctl.restore("lun1", "lun0.t1").copied
            best_full = min(best_full, time.perf_counter() - t0)
            assert full == GIB
        assert ctl.read("lun0", 0, 1 << 20) == ctl.read_backup("lun0", 1, 0, 1 << 20)
        report("RESTORE after 1 % of 1 GiB changed", "full copy (RESTORE into another LUN)",
               best_inc / best_full, "<= 0.05", incremental_s=round(best_inc, 4), full_s=round(best_full, 4),
               incremental_bytes=copied, full_bytes=GIB)
    finally:
        ctl.close()
