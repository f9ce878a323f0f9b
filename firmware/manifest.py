"""Manifests of frozen backups and verifying them.

Owns what a frozen copy records (trigger id, label, sequence number, epoch,
wall time, per-region digests and the whole-copy digest), computing the
digests in slices so foreground I/O never waits for a whole LUN to be hashed,
and recomputing them to verify a copy. The copy is consistent from the
instant it is frozen; the digest only records it. Nothing here writes data.

The whole-copy digest is the xxh3_64 of the region digests packed as
little-endian u64, so a verifier can name the regions that differ.
"""
from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import xxhash

from splitpoint import pyx

_bc = pyx.select("blockcopy")


def combine(regions: list[int]) -> int:
    """The whole-copy digest from the region digests."""
    return _bc.digest(struct.pack(f"<{len(regions)}Q", *regions))


@dataclass
class Manifest:
    """What a frozen copy records about the TRIGGER that cut it."""

    trigger_id: int
    label: str
    seq: int
    epoch: int
    time: float
    size: int
    region_size: int
    regions: list[int] | None = None   # one digest per region, once computed
    digest: int | None = None          # combine(regions), once computed

    def to_dict(self) -> dict:
        return {"trigger_id": self.trigger_id, "label": self.label, "seq": self.seq, "epoch": self.epoch,
                "time": self.time, "size": self.size, "region_size": self.region_size,
                "regions": None if self.regions is None else [f"{r:016x}" for r in self.regions],
                "digest": None if self.digest is None else f"{self.digest:016x}"}

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        regions = d.get("regions")
        digest = d.get("digest")
        return cls(trigger_id=int(d["trigger_id"]), label=str(d["label"]), seq=int(d["seq"]),
                   epoch=int(d["epoch"]), time=float(d["time"]), size=int(d["size"]),
                   region_size=int(d["region_size"]),
                   regions=None if regions is None else [int(r, 16) for r in regions],
                   digest=None if digest is None else int(digest, 16))


class RegionHasher:
    """Digests a device region by region, a bounded number of bytes per step.

    A step that cannot finish a region carries a streaming xxh3 state over to
    the next step, so even one region never blocks the controller for long.
    """

    def __init__(self, device, region_size: int, size: int | None = None):
        self.device = device
        self.region_size = region_size
        self.size = device.size if size is None else size
        self.regions: list[int] = []
        self.offset = 0            # next byte to hash
        self._partial = None       # xxh3 state of the region being hashed, when a step stopped inside it

    @property
    def done(self) -> bool:
        return self.offset >= self.size

    def _bytes(self, offset: int, length: int):
        buf = self.device.buffer()
        if buf is not None:
            return buf[offset:offset + length]
        return self.device.read(offset, length)

    def step(self, budget: int) -> int:
        """Hash up to ``budget`` bytes (at least one block); return the bytes hashed."""
        hashed = 0
        bs = getattr(self.device, "block_size", 512)
        budget = max(budget, bs)
        while not self.done and hashed < budget:
            region_start = len(self.regions) * self.region_size
            region_end = min(region_start + self.region_size, self.size)
            if self._partial is None and self.offset == region_start and region_end - region_start <= budget - hashed:
                buf = self.device.buffer()
                if buf is not None:
                    d = _bc.digest(buf, region_start, region_end - region_start)
                else:
                    d = _bc.digest(self.device.read(region_start, region_end - region_start))
                self.regions.append(d)
                hashed += region_end - region_start
                self.offset = region_end
                continue
            if self._partial is None:
                self._partial = xxhash.xxh3_64()
            n = min(region_end - self.offset, max((budget - hashed) // bs * bs, bs))
            self._partial.update(self._bytes(self.offset, n))
            self.offset += n
            hashed += n
            if self.offset >= region_end:
                self.regions.append(self._partial.intdigest())
                self._partial = None
        return hashed

    def finish(self) -> list[int]:
        while not self.done:
            self.step(64 << 20)
        return self.regions


@dataclass
class VerifyOutcome:
    ok: bool
    actual: int
    bad_regions: list[tuple[int, int]] = field(default_factory=list)


def verify_device(device, manifest: Manifest, progress=None) -> VerifyOutcome:
    """Recompute ``device``'s digests and compare them with ``manifest``."""
    hasher = RegionHasher(device, manifest.region_size, manifest.size)
    total = manifest.size
    while not hasher.done:
        hasher.step(16 << 20)
        if progress is not None:
            progress(hasher.offset, total)
    regions = hasher.regions
    actual = combine(regions)
    bad = []
    if manifest.regions is not None:
        for i, (want, got) in enumerate(zip(manifest.regions, regions)):
            if want != got:
                start = i * manifest.region_size
                bad.append((start, min(manifest.region_size, manifest.size - start)))
        if len(manifest.regions) != len(regions):
            bad.append((0, manifest.size))
    return VerifyOutcome(ok=(actual == manifest.digest and not bad), actual=actual, bad_regions=bad)


def now() -> float:
    return time.time()
