"""Pool members: one backup LUN of a pool, its state names, its I/O for readers and its record.

Owns what one member is (its device, state, manifest, sweep, digest in
progress, incarnation), the reads a backup export or ``verify`` makes of it
(through its device's contract, or on its DeviceQueue when it sits behind a
link), and the record of its state that the metadata store keeps. Every state
transition belongs to its pool (``firmware/pool.py``): nothing here changes a
member's state.
"""
from __future__ import annotations

from splitpoint.firmware.devio import DeviceQueue
from splitpoint.firmware.manifest import Manifest, RegionHasher, VerifyOutcome, verify_device
from splitpoint.firmware.requests import BackupInfo
from splitpoint.firmware.resync import Sweep

EMPTY = "empty"
ACTIVE = "active"
SYNCING = "syncing"
FROZEN = "frozen"
CUTTING = "cutting"
INCONSISTENT = "inconsistent"
STATES = (EMPTY, ACTIVE, SYNCING, FROZEN, CUTTING, INCONSISTENT)


class PoolMember:
    """One backup LUN of a pool."""

    __slots__ = ("pool", "index", "url", "device", "buf", "state", "since", "sweep", "manifest", "hasher",
                 "last_active", "generation", "proven", "error", "incarnation", "pinned")

    def __init__(self, pool, index: int, url: str, device, since: int = 0):
        self.pool = pool
        self.index = index
        self.url = url
        self.device = device
        self.state = EMPTY
        self.since = since              # when (re)activated, chunks with epoch >= since must be copied (0: all)
        self.sweep: Sweep | None = None
        self.manifest: Manifest | None = None
        self.hasher: RegionHasher | None = None
        self.last_active = -1           # rotation clock when it last stopped being active (-1: never)
        self.generation = 0             # +1 each time it is recycled, so readers notice
        self.proven = False             # frozen, and its data was flushed before the manifest was recorded
        self.error: str | None = None
        self.incarnation = device.incarnation   # the device's incarnation the pool's view of its bytes holds for
        self.pinned = False             # a frozen backup rotation must not recycle (firmware/retention.py)

    @property
    def name(self) -> str:
        return f"{self.pool.name}[{self.index}]"

    @property
    def consistent(self) -> bool:
        return self.state == FROZEN and self.device.incarnation == self.incarnation

    @property
    def keeps_bytes(self) -> bool:
        """Its device keeps its bytes across a restart of this process (a RAM member does not)."""
        return self.device.persistent

    @property
    def queued(self) -> bool:
        """Its I/O runs on a DeviceQueue (a member behind a link): a read completes later, by callback."""
        return isinstance(self.device, DeviceQueue)

    # -- readers (backup exports, verify) ------------------------------------------------
    def read(self, offset: int, length: int) -> bytes:
        """Bytes of [offset, offset+length) as the device holds them now (its own bounds check applies)."""
        return self.device.read(offset, length)

    def read_async(self, offset: int, length: int, callback) -> None:
        """A queued member: read on its DeviceQueue; ``callback(data, error)`` runs on that queue's thread."""
        self.device.read_async(offset, length, callback)

    def verify(self, progress=None) -> VerifyOutcome:
        """Recompute the digest of what the device holds and compare it with the manifest."""
        return verify_device(self.device, self.manifest, progress)

    def backup_info(self) -> BackupInfo:
        m = self.manifest
        return BackupInfo(trigger_id=m.trigger_id, label=m.label, seq=m.seq, epoch=m.epoch, time=m.time,
                          member=self.name, digest=m.digest)

    # -- the persisted record ----------------------------------------------------------------
    def save_state(self) -> dict:
        """What the metadata store keeps of this member (the pool decides what it means at a restart)."""
        return {"url": self.url, "state": self.state, "since": self.since, "last_active": self.last_active,
                "generation": self.generation, "proven": self.proven, "pinned": self.pinned,
                "manifest": None if self.manifest is None else self.manifest.to_dict(),
                "sweep": None if self.sweep is None else self.sweep.save_state()}

    def status(self, now: float) -> dict:
        m = self.manifest
        doc = {"index": self.index, "url": self.url, "state": self.state,
               "role": "active" if self.pool.active is self else ("backup" if self.state == FROZEN else "spare"),
               "consistent": self.consistent, "generation": self.generation, "pinned": self.pinned}
        if m is not None:
            doc.update({"trigger_id": m.trigger_id, "label": m.label, "seq": m.seq, "epoch": m.epoch,
                        "time": m.time, "age": round(max(now - m.time, 0.0), 3),
                        "digest": None if m.digest is None else f"{m.digest:016x}",
                        "digest_progress": None if self.hasher is None else
                        round(100.0 * self.hasher.offset / max(self.hasher.size, 1), 1)})
        if self.sweep is not None:
            doc["resync"] = self.sweep.progress()
        if self.error:
            doc["error"] = self.error
        if self.device.link_down:
            doc["link_down"] = True
        return doc
