"""stall=AFTER[:DURATION]: after AFTER frames (or I/Os) the link goes silent, or I/O hangs.

Without DURATION a stalled link stays silent for good: a board that stopped
answering. A stalled device blocks each I/O for DURATION (default 1 s).
"""
import time

from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


class StallFrames(FrameFilter):
    def __init__(self, rng, after: int, seconds: float | None = None):
        super().__init__(rng)
        self.after = after
        self.seconds = seconds
        self.seen = 0
        self.until = None

    def push(self, frame, now):
        self.seen += 1
        if self.seen <= self.after:
            return [frame]
        if self.until is None:
            self.until = now + self.seconds if self.seconds is not None else float("inf")
        if now < self.until:
            self.count += 1
            return []
        return [frame]


class StallIO(DeviceFilter):
    def __init__(self, next_device, rng, after: int, seconds: float | None = None):
        super().__init__(next_device, rng)
        self.after = after
        self.seconds = 1.0 if seconds is None else seconds
        self.seen = 0

    def _tick(self):
        self.seen += 1
        if self.seen > self.after:
            self.count += 1
            time.sleep(self.seconds)

    def read(self, offset, length):
        self._tick()
        return self.next.read(offset, length)

    def write(self, offset, data, fua=False):
        self._tick()
        self.next.write(offset, data, fua)

    def flush(self):
        self._tick()
        self.next.flush()

    def trim(self, offset, length):
        self._tick()
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._tick()
        self.next.write_zeroes(offset, length, fua)


FRAME, DEVICE = StallFrames, StallIO
