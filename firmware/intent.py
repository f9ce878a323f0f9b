"""Write intent: which chunks of a persistent source LUN may differ from its last persisted epoch map.

Owns, for one primary LUN on a persistent device, the set of chunks that
writes, trims and zeroings may have touched since the epoch maps were last
persisted (md-raid's write-intent bitmap is the model). Before the controller
executes a batch, every chunk the batch will touch that is not yet in the
durable set is added and the set is made durable, once per batch. Persisting
the epoch maps clears the set. After a crash the controller treats every
chunk in the set as written in the newest epoch.

It never executes a write and never decides what a member needs: the
controller reads the set at recovery and the pool's sweeps do the copying.
"""
from __future__ import annotations

import time

from splitpoint import pyx
from splitpoint.firmware.metadata import IntentLog

_em = pyx.select("epochmap")


class WriteIntent:
    """The durable write-intent set of one LUN, extending one persisted epoch maps record."""

    def __init__(self, lun, log: IntentLog):
        self.lun = lun
        self.log = log
        self.chunk_size = lun.chunk_size
        self.bits = _em.ChunkBitmap(lun.size, lun.chunk_size)   # durable, plus what declare() is adding
        self.maps_generation = 0      # the epoch maps record this set extends (0: none yet)
        self.opened: float | None = None   # monotonic time the set became non-empty since the last clear
        self.fresh = False            # bits added since the last durable update
        self.updates = 0              # durable updates written
        self.failed: str | None = None

    def note(self, offset: int, length: int) -> None:
        """A write, trim or zeroing of [offset, offset+length) is about to execute."""
        cs = self.chunk_size
        c0 = offset // cs
        c1 = (offset + length - 1) // cs
        bits = self.bits
        for c in range(c0, c1 + 1):
            if not bits.test(c):
                bits.set_range(c0 * cs, min((c1 + 1) * cs, self.lun.size) - c0 * cs)
                self.fresh = True
                return

    def commit(self) -> None:
        """Make the noted chunks durable before any of them is written (raises OSError)."""
        if not self.fresh:
            return
        self.log.write(self.maps_generation, self.bits.to_bytes())
        self.fresh = False
        self.updates += 1
        if self.opened is None:
            self.opened = time.monotonic()

    def cleared(self, maps_generation: int) -> None:
        """The epoch maps were persisted as ``maps_generation``: the durable set is empty again."""
        self.maps_generation = maps_generation
        self.bits.clear_range(0, self.lun.size)
        self.opened = None
        self.fresh = False

    def count(self) -> int:
        return self.bits.count()

    def status(self) -> dict:
        return {"chunks": self.count(), "updates": self.updates, "maps_generation": self.maps_generation,
                "error": self.failed}
