"""delay=DURATION: deliver every frame late, or make every I/O slow."""
import collections
import time

from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


class DelayFrames(FrameFilter):
    def __init__(self, rng, seconds: float):
        super().__init__(rng)
        self.seconds = seconds
        self.queue = collections.deque()  # (due, frame), due non-decreasing

    def push(self, frame, now):
        self.count += 1
        self.queue.append((now + self.seconds, frame))
        return self.poll(now)

    def poll(self, now):
        out = []
        while self.queue and self.queue[0][0] <= now:
            out.append(self.queue.popleft()[1])
        return out

    def next_due(self):
        return self.queue[0][0] if self.queue else None


class DelayIO(DeviceFilter):
    def __init__(self, next_device, rng, seconds: float):
        super().__init__(next_device, rng)
        self.seconds = seconds

    def _wait(self):
        self.count += 1
        time.sleep(self.seconds)

    def read(self, offset, length):
        self._wait()
        return self.next.read(offset, length)

    def write(self, offset, data, fua=False):
        self._wait()
        self.next.write(offset, data, fua)

    def flush(self):
        self._wait()
        self.next.flush()

    def trim(self, offset, length):
        self._wait()
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._wait()
        self.next.write_zeroes(offset, length, fua)


FRAME, DEVICE = DelayFrames, DelayIO
