"""disconnect=EVERY:DOWN: unplug the link every EVERY frames for DOWN seconds, then replug;
on a device, every EVERY I/Os it is gone (DeviceGoneError) for DOWN seconds."""
import time

from splitpoint.hal.contract import DeviceGoneError
from splitpoint.hal.filters.base import DeviceFilter, FrameFilter


class DisconnectLink(FrameFilter):
    """Needs a link with ``unplug()`` and ``replug_after(seconds)`` (the emulator's)."""

    def __init__(self, rng, every: int, seconds: float):
        super().__init__(rng)
        self.every = every
        self.seconds = seconds
        self.seen = 0

    def push(self, frame, now):
        self.seen += 1
        if self.seen % self.every == 0 and self.link is not None:
            self.count += 1
            self.link.unplug()
            self.link.replug_after(self.seconds)
            return []
        return [frame]


class DisconnectDevice(DeviceFilter):
    def __init__(self, next_device, rng, every: int, seconds: float):
        super().__init__(next_device, rng)
        self.every = every
        self.seconds = seconds
        self.seen = 0
        self.down_until = 0.0

    def _check(self):
        now = time.monotonic()
        if now < self.down_until:
            raise DeviceGoneError(f"{self.next.describe()} is disconnected (injected) for another "
                                  f"{self.down_until - now:.2f} s")
        self.seen += 1
        if self.seen % self.every == 0:
            self.count += 1
            self.down_until = now + self.seconds
            raise DeviceGoneError(f"{self.next.describe()} disconnected (injected) for {self.seconds} s")

    def read(self, offset, length):
        self._check()
        return self.next.read(offset, length)

    def write(self, offset, data, fua=False):
        self._check()
        self.next.write(offset, data, fua)

    def flush(self):
        self._check()
        self.next.flush()

    def trim(self, offset, length):
        self._check()
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._check()
        self.next.write_zeroes(offset, length, fua)


FRAME, DEVICE = DisconnectLink, DisconnectDevice
