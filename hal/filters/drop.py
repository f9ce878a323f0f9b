"""drop=RATE: lose frames on the link, or acknowledge writes without applying them."""
from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


class DropFrames(FrameFilter):
    def __init__(self, rng, rate: float):
        super().__init__(rng)
        self.rate = rate

    def push(self, frame, now):
        if self.rng.random() < self.rate:
            self.count += 1
            return []
        return [frame]


class DropWrites(DeviceFilter):
    """A write, trim or zeroing is acknowledged but never reaches the medium (a lying cache)."""

    def __init__(self, next_device, rng, rate: float):
        super().__init__(next_device, rng)
        self.rate = rate

    def _lost(self):
        if self.rng.random() < self.rate:
            self.count += 1
            return True
        return False

    def write(self, offset, data, fua=False):
        if not self._lost():
            self.next.write(offset, data, fua)

    def trim(self, offset, length):
        if not self._lost():
            self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        if not self._lost():
            self.next.write_zeroes(offset, length, fua)


FRAME, DEVICE = DropFrames, DropWrites
