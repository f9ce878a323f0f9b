"""duplicate=RATE: send a frame twice, or apply a write twice."""
from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


class DuplicateFrames(FrameFilter):
    def __init__(self, rng, rate: float):
        super().__init__(rng)
        self.rate = rate

    def push(self, frame, now):
        if self.rng.random() < self.rate:
            self.count += 1
            return [frame, frame]
        return [frame]


class DuplicateWrites(DeviceFilter):
    def __init__(self, next_device, rng, rate: float):
        super().__init__(next_device, rng)
        self.rate = rate

    def write(self, offset, data, fua=False):
        self.next.write(offset, data, fua)
        if self.rng.random() < self.rate:
            self.count += 1
            self.next.write(offset, data, fua)


FRAME, DEVICE = DuplicateFrames, DuplicateWrites
