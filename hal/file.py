"""The ``file://`` backend: a LUN in an image file.

The image is sparse when created. FLUSH and FUA writes call fdatasync, so an
acknowledged FLUSH survives a crash of the controller process. TRIM punches a
hole where the filesystem can, and writes zeros where it cannot.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

from splitpoint import pyx
from splitpoint.hal.contract import BadURLError, BlockDevice, DeviceClosedError, ReadOnlyError, check_io
from splitpoint.hal.url import check_geometry, parse_bool, parse_size, split_url

# URL grammar:  file:///ABSOLUTE/PATH[?size=SIZE][&block=BLOCK][&create=0|1][&readonly=0|1]
#   create=1 makes (or extends) a sparse image of SIZE; without it the file must
#   exist and SIZE, if given, must match its length.
GRAMMAR = "file:///PATH[?size=SIZE][&block=BLOCK][&create=0|1][&readonly=0|1]"
OPTIONS = {"size", "block", "create", "readonly"}

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _blockcopy():
    return pyx.select("blockcopy")


class FileDevice(BlockDevice):
    scheme = "file"

    def __init__(self, path: str, size: int | None = None, block_size: int = 512,
                 create: bool = False, read_only: bool = False):
        self.path = path
        self.block_size = block_size
        self.read_only = read_only
        flags = os.O_RDONLY if read_only else os.O_RDWR
        if create and not read_only:
            flags |= os.O_CREAT
        try:
            self._fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise BadURLError(f"cannot open image {path!r}: {exc.strerror}; grammar: {GRAMMAR}") from exc
        length = os.fstat(self._fd).st_size
        if create and size is not None and length < size:
            os.ftruncate(self._fd, size)  # sparse: no blocks are allocated
            length = size
        if size is not None and length != size:
            os.close(self._fd)
            raise BadURLError(f"image {path!r} is {length} bytes, not the {size} asked for; grammar: {GRAMMAR}")
        try:
            check_geometry(length, block_size, GRAMMAR)
        except BadURLError:
            os.close(self._fd)
            raise
        self.size = length
        self._punch = _fallocate is not None

    @classmethod
    def from_url(cls, url: str) -> "FileDevice":
        netloc, path, opts = split_url(url, GRAMMAR, OPTIONS)
        if netloc or not path:
            raise BadURLError(f"file URL {url!r} needs an absolute path (three slashes); grammar: {GRAMMAR}")
        return cls(
            path,
            parse_size(opts["size"]) if "size" in opts else None,
            parse_size(opts.get("block", "512")),
            parse_bool(opts.get("create", "0")),
            parse_bool(opts.get("readonly", "0")),
        )

    def _live(self):
        if self._fd < 0:
            raise DeviceClosedError(f"image {self.path!r} is closed")
        return self._fd

    def _writable(self):
        if self.read_only:
            raise ReadOnlyError(f"image {self.path!r} is read-only")
        return self._live()

    def read(self, offset, length):
        fd = self._live()
        check_io(offset, length, self.size, self.block_size)
        data = os.pread(fd, length, offset)
        if len(data) < length:  # a file shrunk behind our back reads as zeros, never short
            data += bytes(length - len(data))
        return data

    def readinto(self, offset, buf):
        fd = self._live()
        dst = memoryview(buf).cast("B")
        check_io(offset, len(dst), self.size, self.block_size)
        got = os.preadv(fd, [dst], offset)
        if got < len(dst):
            dst[got:] = bytes(len(dst) - got)

    def write(self, offset, data, fua=False):
        fd = self._writable()
        src = memoryview(data).cast("B")
        check_io(offset, len(src), self.size, self.block_size)
        done = 0
        while done < len(src):
            done += os.pwrite(fd, src[done:], offset + done)
        if fua:
            os.fdatasync(fd)

    def copy_from(self, src, extents):
        """Between two images the kernel moves the bytes (copy_file_range, GIL released); from
        anything else, the contract's copy through ``write()``."""
        if type(src) is not FileDevice:
            return super().copy_from(src, extents)
        extents = list(extents)
        fd, src_fd = self._writable(), src._live()
        for offset, length in extents:
            check_io(offset, length, self.size, self.block_size)
            check_io(offset, length, src.size, src.block_size)
        return _blockcopy().copy_file_extents(src_fd, fd, extents, src.size, self.size)

    def flush(self):
        os.fdatasync(self._live())

    def trim(self, offset, length):
        fd = self._writable()
        check_io(offset, length, self.size, self.block_size)
        if self._punch and _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
            return
        if ctypes.get_errno() in (errno.EOPNOTSUPP, errno.ENOSYS):
            self._punch = False
        self._zero_fill(fd, offset, length)

    def write_zeroes(self, offset, length, fua=False):
        self.trim(offset, length)
        if fua:
            os.fdatasync(self._live())

    def _zero_fill(self, fd, offset, length):
        zero = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            n = min(end - offset, len(zero))
            offset += os.pwrite(fd, memoryview(zero)[:n], offset)

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def describe(self):
        return f"file {self.path}: {self.size} bytes, block {self.block_size}"
