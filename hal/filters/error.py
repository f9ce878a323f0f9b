"""error=RATE: an I/O fails with InjectedIOError (nbdkit's error filter)."""
from splitpoint.hal.contract import HalError
from splitpoint.hal.filters.base import DeviceFilter


class InjectedIOError(HalError):
    """A medium error injected by the error filter."""


class ErrorIO(DeviceFilter):
    def __init__(self, next_device, rng, rate: float):
        super().__init__(next_device, rng)
        self.rate = rate

    def _maybe_fail(self, what, offset):
        if self.rng.random() < self.rate:
            self.count += 1
            raise InjectedIOError(f"injected medium error on {what} at offset {offset}")

    def read(self, offset, length):
        self._maybe_fail("read", offset)
        return self.next.read(offset, length)

    def write(self, offset, data, fua=False):
        self._maybe_fail("write", offset)
        self.next.write(offset, data, fua)

    def trim(self, offset, length):
        self._maybe_fail("trim", offset)
        self.next.trim(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._maybe_fail("write_zeroes", offset)
        self.next.write_zeroes(offset, length, fua)


FRAME, DEVICE = None, ErrorIO
