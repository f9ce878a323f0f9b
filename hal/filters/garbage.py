"""garbage=RATE: line noise, 1-32 random bytes (zeros included) before a frame."""
from splitpoint.hal.filters.base import FrameFilter


class GarbageBeforeFrames(FrameFilter):
    def __init__(self, rng, rate: float):
        super().__init__(rng)
        self.rate = rate

    def push(self, frame, now):
        if self.rng.random() < self.rate:
            self.count += 1
            noise = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 33)))
            return [noise, frame]
        return [frame]


FRAME, DEVICE = GarbageBeforeFrames, None
