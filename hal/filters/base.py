"""The two planes a fault filter can sit on, and how filters stack.

Frame plane: a filter takes whole wire frames (bytes ending in 0x00) one at a
time and returns the frames to pass on now; ``poll`` releases frames it held
back (delay, reorder). A FrameChain stacks filters in order. The emulator runs
one chain per direction of its link.

Block plane: a DeviceFilter is a BlockDevice wrapping ``next`` (nbdkit's
pattern); it forwards every hook and changes exactly one behaviour. It hides
``buffer()`` so zero-copy kernels cannot bypass it.
"""
from __future__ import annotations

import random

from splitpoint.hal.contract import BlockDevice


class FrameFilter:
    """One behaviour on a stream of wire frames."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.link = None
        self.count = 0  # frames this filter acted on (dropped, corrupted, ...)

    def attach(self, link) -> None:
        """Give the filter the link it sits on (for unplug/replug)."""
        self.link = link

    def push(self, frame: bytes, now: float) -> list[bytes]:
        """The frames to pass on now, given one more arriving."""
        return [frame]

    def poll(self, now: float) -> list[bytes]:
        """Frames held back whose time has come."""
        return []

    def next_due(self) -> float | None:
        """When ``poll`` will next release something (monotonic seconds), or None."""
        return None


class FrameChain:
    """Filters applied in order; an empty chain passes every frame through."""

    def __init__(self, filters: list[FrameFilter] | None = None):
        self.filters = list(filters or [])

    def attach(self, link) -> None:
        for f in self.filters:
            f.attach(link)

    def push(self, frame: bytes, now: float) -> list[bytes]:
        frames = [frame]
        for f in self.filters:
            frames = [out for x in frames for out in f.push(x, now)]
        return frames

    def poll(self, now: float) -> list[bytes]:
        carried: list[bytes] = []
        for f in self.filters:
            nxt = [out for x in carried for out in f.push(x, now)]
            nxt += f.poll(now)
            carried = nxt
        return carried

    def next_due(self) -> float | None:
        dues = [d for d in (f.next_due() for f in self.filters) if d is not None]
        return min(dues) if dues else None

    def counts(self) -> dict[str, int]:
        return {type(f).__name__: f.count for f in self.filters}


class DeviceFilter(BlockDevice):
    """A BlockDevice that forwards every hook to ``next``; subclasses change one behaviour."""

    def __init__(self, next_device: BlockDevice, rng: random.Random):
        self.next = next_device
        self.rng = rng
        self.scheme = next_device.scheme
        self.size = next_device.size
        self.block_size = next_device.block_size
        self.read_only = next_device.read_only
        self.count = 0  # I/Os this filter acted on

    @property
    def incarnation(self) -> int:
        return self.next.incarnation   # a filter never hides that the medium below was reset

    @property
    def link_down(self) -> bool:
        return self.next.link_down

    @property
    def persistent(self) -> bool:
        return self.next.persistent   # a filter changes faults, never what the medium keeps

    def read(self, offset, length):
        return self.next.read(offset, length)

    def readinto(self, offset, buf):
        mv = memoryview(buf).cast("B")
        mv[:] = self.read(offset, len(mv))

    def write(self, offset, data, fua=False):
        self.next.write(offset, data, fua)

    def flush(self):
        self.next.flush()

    def trim(self, offset, length):
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self.next.write_zeroes(offset, length, fua)

    def buffer(self):
        return None

    def close(self):
        self.next.close()

    def describe(self):
        return f"{type(self).__name__} over {self.next.describe()}"
