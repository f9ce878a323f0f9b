"""kill=AFTER: the AFTER-th write reaches the medium, then the process dies by SIGKILL.

A crash between a device write and whatever the controller does next (mirror
it, acknowledge it): the bytes are in the page cache, as after a kill -9 of a
controller mid-request. Writes, trims and zeroings count; reads and FLUSHes
do not.
"""
import os
import signal

from splitpoint.hal.filters.base import DeviceFilter


class KillAfterWrite(DeviceFilter):
    def __init__(self, next_device, rng, after: int):
        super().__init__(next_device, rng)
        self.after = after
        self.seen = 0

    def _tick(self):
        self.seen += 1
        if self.seen >= self.after:
            self.count += 1
            os.kill(os.getpid(), signal.SIGKILL)

    def write(self, offset, data, fua=False):
        self.next.write(offset, data, fua)
        self._tick()

    def trim(self, offset, length):
        self.next.trim(offset, length)
        self._tick()

    def write_zeroes(self, offset, length, fua=False):
        self.next.write_zeroes(offset, length, fua)
        self._tick()


FRAME, DEVICE = None, KillAfterWrite
