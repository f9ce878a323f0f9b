"""reorder=RATE: hold a frame back behind the next one, or apply a write after the next write.

A held frame goes out after the next frame, or after HOLD seconds when the
link goes quiet. A held write is applied after the next write, and before any
flush, read or close, so FLUSH stays a barrier (as on a real write cache).
"""
from splitpoint.hal.filters.base import DeviceFilter, FrameFilter

HOLD = 0.05  # longest a frame is held when nothing follows it


class ReorderFrames(FrameFilter):
    def __init__(self, rng, rate: float):
        super().__init__(rng)
        self.rate = rate
        self.held = None  # (frame, due)

    def push(self, frame, now):
        if self.held is not None:
            held, self.held = self.held[0], None
            return [frame, held]
        if self.rng.random() < self.rate:
            self.count += 1
            self.held = (frame, now + HOLD)
            return []
        return [frame]

    def poll(self, now):
        if self.held is not None and now >= self.held[1]:
            held, self.held = self.held[0], None
            return [held]
        return []

    def next_due(self):
        return self.held[1] if self.held is not None else None


class ReorderWrites(DeviceFilter):
    def __init__(self, next_device, rng, rate: float):
        super().__init__(next_device, rng)
        self.rate = rate
        self.held = None  # (offset, data, fua)

    def _release(self):
        if self.held is not None:
            offset, data, fua = self.held
            self.held = None
            self.next.write(offset, data, fua)

    def write(self, offset, data, fua=False):
        if self.held is not None:
            self.next.write(offset, data, fua)
            self._release()
            return
        if not fua and self.rng.random() < self.rate:
            self.count += 1
            self.held = (offset, bytes(data), fua)
            return
        self.next.write(offset, data, fua)

    def read(self, offset, length):
        self._release()
        return self.next.read(offset, length)

    def flush(self):
        self._release()
        self.next.flush()

    def trim(self, offset, length):
        self._release()
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._release()
        self.next.write_zeroes(offset, length, fua)

    def close(self):
        self._release()
        self.next.close()


FRAME, DEVICE = ReorderFrames, ReorderWrites
