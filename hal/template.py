"""A do-nothing backend that shows a porter every hook of the contract.

Copy this file to ``hal/<scheme>.py``, give it the URL grammar comment, and
fill in each hook. It is importable and passes the contract's type checks,
but every I/O fails with NotImplementedError, so it can never be mistaken for
storage.
"""
from splitpoint.hal.contract import BlockDevice

# URL grammar:  template://?size=SIZE&block=BLOCK   (never registered)


class TemplateDevice(BlockDevice):
    scheme = "template"
    persistent = True  # False only when the medium starts empty on every open (like ram://)

    def __init__(self, size: int = 0, block_size: int = 512):
        self.size = size  # capacity in bytes
        self.block_size = block_size  # smallest I/O unit

    def read(self, offset, length):
        raise NotImplementedError("read: fetch the blocks from the medium")

    def write(self, offset, data, fua=False):
        raise NotImplementedError("write: store the blocks; with fua, make them durable first")

    def flush(self):
        raise NotImplementedError("flush: make every completed write durable")

    def trim(self, offset, length):
        raise NotImplementedError("trim: discard the range so it reads as zeros")

    def write_zeroes(self, offset, length, fua=False):
        raise NotImplementedError("write_zeroes: zero the range")

    def close(self):
        raise NotImplementedError("close: release the medium")
