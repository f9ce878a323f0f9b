"""The ``ram://`` backend: a LUN held in anonymous memory.

Pages are allocated lazily by the kernel, so a large RAM disk costs nothing
until written. ``buffer()`` exposes the memory itself for zero-copy kernels.
"""
from __future__ import annotations

import mmap

from splitpoint.hal.contract import BlockDevice, DeviceClosedError, HalError, ReadOnlyError, check_io
from splitpoint.hal.url import check_geometry, parse_bool, parse_size, split_url

# URL grammar:  ram://[NAME]?size=SIZE[&block=BLOCK][&readonly=0|1]
#   SIZE and BLOCK take K/M/G/T suffixes; block defaults to 512, size to 64M.
GRAMMAR = "ram://[NAME]?size=SIZE[&block=BLOCK][&readonly=0|1]"
OPTIONS = {"size", "block", "readonly"}


class RamTooLargeError(HalError):
    """The memory for a RAM device cannot be reserved (size larger than the machine allows)."""


class RamDevice(BlockDevice):
    scheme = "ram"
    persistent = False   # anonymous memory: gone with the process, zeros at start
    writable_buffer = True   # write() is a copy into buffer() and nothing else

    def __init__(self, size: int, block_size: int = 512, read_only: bool = False, name: str = ""):
        check_geometry(size, block_size, GRAMMAR)
        self.size = size
        self.block_size = block_size
        self.read_only = read_only
        self.name = name
        try:
            self._mem = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, OverflowError) as exc:
            raise RamTooLargeError(f"cannot reserve {size} bytes of memory for ram://{name} "
                                   f"({getattr(exc, 'strerror', None) or exc}); give a smaller size=") from None
        self._view = memoryview(self._mem)

    @classmethod
    def from_url(cls, url: str) -> "RamDevice":
        name, _path, opts = split_url(url, GRAMMAR, OPTIONS)
        return cls(
            parse_size(opts.get("size", "64M")),
            parse_size(opts.get("block", "512")),
            parse_bool(opts.get("readonly", "0")),
            name,
        )

    def _live(self):
        if self._view is None:
            raise DeviceClosedError("ram device is closed")
        return self._view

    def _writable(self):
        if self.read_only:
            raise ReadOnlyError("ram device is read-only")
        return self._live()

    def read(self, offset, length):
        view = self._live()
        check_io(offset, length, self.size, self.block_size)
        return bytes(view[offset:offset + length])

    def readinto(self, offset, buf):
        view = self._live()
        dst = memoryview(buf).cast("B")
        check_io(offset, len(dst), self.size, self.block_size)
        dst[:] = view[offset:offset + len(dst)]

    def write(self, offset, data, fua=False):
        view = self._writable()
        src = memoryview(data).cast("B")
        check_io(offset, len(src), self.size, self.block_size)
        view[offset:offset + len(src)] = src

    def flush(self):
        self._live()

    def trim(self, offset, length):
        self.write_zeroes(offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self._writable()
        check_io(offset, length, self.size, self.block_size)
        # madvise would drop whole pages; filling keeps the code independent of page size
        self._mem.seek(offset)
        zero = bytes(min(length, 1 << 20))
        left = length
        while left:
            n = min(left, len(zero))
            self._mem.write(zero[:n] if n < len(zero) else zero)
            left -= n

    def buffer(self):
        return self._live()

    def close(self):
        if self._view is not None:
            self._view.release()
            self._view = None
            self._mem.close()

    def describe(self):
        return f"ram{(' ' + self.name) if self.name else ''}: {self.size} bytes, block {self.block_size}"
