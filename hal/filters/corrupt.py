"""corrupt=RATE: change one byte of a frame on the link, or of the data a read returns."""
from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


def _flip(rng, data: bytes, end: int) -> bytes:
    out = bytearray(data)
    i = rng.randrange(end)
    out[i] ^= rng.randrange(1, 256)  # never a no-op
    return bytes(out)


class CorruptFrames(FrameFilter):
    def __init__(self, rng, rate: float):
        super().__init__(rng)
        self.rate = rate

    def push(self, frame, now):
        if len(frame) > 1 and self.rng.random() < self.rate:
            self.count += 1
            return [_flip(self.rng, frame, len(frame) - 1)]  # the delimiter stays
        return [frame]


class CorruptReads(DeviceFilter):
    """A read returns one wrong byte; the medium itself is untouched (a flaky bus)."""

    def __init__(self, next_device, rng, rate: float):
        super().__init__(next_device, rng)
        self.rate = rate

    def read(self, offset, length):
        data = self.next.read(offset, length)
        if self.rng.random() < self.rate:
            self.count += 1
            return _flip(self.rng, data, len(data))
        return data


FRAME, DEVICE = CorruptFrames, CorruptReads
