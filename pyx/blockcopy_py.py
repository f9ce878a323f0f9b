"""Block copy, compare and digest, pure-Python twin of ``blockcopy.pyx``: the resync loop's data movers.

Owns moving and comparing byte extents between two buffers (a RAM disk's
memoryview, a bytearray, a numpy array: anything exporting a C-contiguous
buffer). It never decides *which* extents to move: dirty tracking
(``epochmap``) and the controller do.

Rules both implementations share (the tests hold them to it):
- ``extents`` is an iterable of ``(offset, length)`` pairs or a numpy ``(n, 2)``
  integer array. Every extent is checked against both buffers before a single
  byte moves; zero-length extents are checked and then skipped.
- ``copy_extents`` sorts and merges adjacent or overlapping extents, so the
  count it returns is the bytes of their union.
- ``compare_extents`` reports the extents as given (not merged), in input order.
- ``copy_file_extents`` moves the same extents between two open file
  descriptors in the kernel (``copy_file_range``), falling back to
  ``pread``/``pwrite`` through one bounce buffer where the kernel refuses (two
  file systems, no support); bytes past the end of a short source file are
  written as zeros. An I/O error is raised as ``OSError`` with its errno.
- ``digest`` is xxh3_64, the value of ``xxhash.xxh3_64_intdigest`` of the same bytes.

The compiled module raises these same exception classes (it imports them from here).
"""
from __future__ import annotations

import errno
import operator
import os

import numpy as np
import xxhash


class ExtentError(ValueError):
    """Base of the errors raised for a bad extent or region."""


class ExtentOutOfRangeError(ExtentError, IndexError):
    """An extent is negative or runs past the end of a buffer."""


class ExtentShapeError(ExtentError):
    """An extent array is not (n, 2) integers, or a pair is not two integers."""


class ReadOnlyBufferError(BufferError):
    """The destination buffer cannot be written."""


class NonContiguousBufferError(BufferError):
    """A buffer is not C-contiguous, so it cannot be addressed as flat bytes."""


def byte_view(obj, writable: bool = False) -> memoryview:
    """A flat unsigned-byte memoryview of ``obj`` without copying."""
    view = memoryview(obj)
    if not view.c_contiguous:
        raise NonContiguousBufferError(
            f"{type(obj).__name__} buffer is not C-contiguous: pass a contiguous copy (e.g. numpy.ascontiguousarray)")
    if writable and view.readonly:
        raise ReadOnlyBufferError(
            f"destination {type(obj).__name__} is read-only: pass a bytearray, a writable memoryview or a numpy array")
    if view.ndim == 1 and view.format == "B":
        return view
    try:
        return view.cast("B")
    except TypeError:  # formats memoryview cannot cast (numpy structured dtypes): let numpy reinterpret
        return memoryview(np.frombuffer(obj, dtype=np.uint8))


def extent_pairs(extents) -> list[tuple[int, int]]:
    """``extents`` as a list of (offset, length) Python ints, shape and sign checked."""
    if isinstance(extents, np.ndarray):
        if extents.ndim != 2 or extents.shape[1] != 2 or extents.dtype.kind not in "ui":
            raise ExtentShapeError(f"extent array must be (n, 2) integers, got shape {extents.shape} {extents.dtype}")
        pairs = [tuple(p) for p in extents.tolist()]
    else:
        pairs = []
        for item in extents:
            try:
                offset, length = item
            except (TypeError, ValueError):
                raise ExtentShapeError(f"extent {item!r} is not an (offset, length) pair") from None
            pairs.append((operator.index(offset), operator.index(length)))
    for offset, length in pairs:
        if offset < 0 or length < 0:
            raise ExtentOutOfRangeError(f"negative extent: offset {offset}, length {length}")
    return pairs


def check_extents(pairs, *sizes) -> None:
    for offset, length in pairs:
        for size in sizes:
            if offset + length > size:
                raise ExtentOutOfRangeError(f"extent {offset}+{length} runs past the end of a buffer of {size} bytes")


def merge_extents(pairs) -> list[tuple[int, int]]:
    """Sorted union of ``pairs`` with adjacent and overlapping extents joined; zero-length ones dropped."""
    merged: list[list[int]] = []
    for offset, length in sorted(p for p in pairs if p[1]):
        end = offset + length
        if merged and offset <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([offset, end])
    return [(s, e - s) for s, e in merged]


def copy_extents(src, dst, extents) -> int:
    """Copy every extent from ``src`` to ``dst`` (same offsets); return the bytes copied."""
    s = byte_view(src)
    d = byte_view(dst, writable=True)
    pairs = extent_pairs(extents)
    check_extents(pairs, s.nbytes, d.nbytes)
    total = 0
    for offset, length in merge_extents(pairs):
        d[offset:offset + length] = s[offset:offset + length]
        total += length
    return total


#: bytes per pread/pwrite when copy_file_range cannot be used
FILE_BOUNCE = 4 << 20
#: the most one copy_file_range call is asked to move
FILE_STEP = 1 << 30
#: errnos for which copy_file_range is given up in favour of pread/pwrite
_NO_KERNEL_COPY = frozenset((errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ETXTBSY))


def _bounce_copy(src_fd: int, dst_fd: int, pos: int, end: int) -> None:
    while pos < end:
        n = min(FILE_BOUNCE, end - pos)
        data = os.pread(src_fd, n, pos)
        if not data:              # past the source's end: zeros, never a short copy
            data = bytes(n)
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(dst_fd, view[done:], pos + done)
        pos += len(view)


def copy_file_extents(src_fd: int, dst_fd: int, extents, src_size: int, dst_size: int) -> int:
    """Copy every extent from file ``src_fd`` to file ``dst_fd`` (same offsets); return the bytes copied.

    Every extent is checked against ``src_size`` and ``dst_size`` first; they are merged like
    ``copy_extents``'s."""
    pairs = extent_pairs(extents)
    check_extents(pairs, operator.index(src_size), operator.index(dst_size))
    kernel = hasattr(os, "copy_file_range")
    total = 0
    for offset, length in merge_extents(pairs):
        pos, end = offset, offset + length
        while pos < end and kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(FILE_STEP, end - pos), pos, pos)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                break
            if n == 0:            # the source ends here: the rest is zeros
                break
            pos += n
        _bounce_copy(src_fd, dst_fd, pos, end)
        total += length
    return total


def chunk_extents(chunks, chunk_size: int, size: int) -> list[tuple[int, int]]:
    """Byte extents of chunk indices (a ChunkBitmap or an iterable of ints), the last clipped to ``size``."""
    if hasattr(chunks, "extents") and hasattr(chunks, "chunk_size"):
        if chunks.chunk_size != chunk_size:
            raise ExtentShapeError(f"bitmap chunk size {chunks.chunk_size} differs from chunk_size {chunk_size}")
        return chunks.extents()
    chunk_size = operator.index(chunk_size)
    if chunk_size <= 0:
        raise ExtentShapeError(f"chunk_size must be > 0, got {chunk_size}")
    out = []
    for chunk in chunks:
        chunk = operator.index(chunk)
        offset = chunk * chunk_size
        if chunk < 0 or offset >= size:
            raise ExtentOutOfRangeError(f"chunk {chunk} of {chunk_size} bytes lies outside a {size}-byte buffer")
        out.append((offset, min(chunk_size, size - offset)))
    return out


def copy_chunks(src, dst, chunks, chunk_size: int) -> int:
    """Copy whole chunks (a ChunkBitmap or chunk indices) from ``src`` to ``dst``; the last may be partial."""
    s = byte_view(src)
    return copy_extents(src, dst, chunk_extents(chunks, chunk_size, s.nbytes))


def compare_extents(a, b, extents) -> list[tuple[int, int]]:
    """The extents (as given, in order) whose bytes differ between ``a`` and ``b``."""
    va, vb = byte_view(a), byte_view(b)
    pairs = extent_pairs(extents)
    check_extents(pairs, va.nbytes, vb.nbytes)
    return [(o, n) for o, n in pairs if n and va[o:o + n] != vb[o:o + n]]


def digest(buf, offset: int = 0, length: int | None = None) -> int:
    """xxh3_64 of ``length`` bytes of ``buf`` from ``offset`` (None = to the end)."""
    view = byte_view(buf)
    offset, length = digest_range(offset, length, view.nbytes)
    return xxhash.xxh3_64_intdigest(view[offset:offset + length])


def digest_range(offset, length, size: int) -> tuple[int, int]:
    """(offset, length) of a digest of a ``size``-byte buffer, checked; length None = to the end."""
    offset = operator.index(offset)
    if not 0 <= offset <= size:
        raise ExtentOutOfRangeError(f"digest offset {offset} outside a buffer of {size} bytes")
    length = size - offset if length is None else operator.index(length)
    if length < 0 or offset + length > size:
        raise ExtentOutOfRangeError(f"digest length {length} from offset {offset} runs past a buffer of {size} bytes")
    return offset, length


def digest_regions(buf, region_size: int) -> list[int]:
    """xxh3_64 of each ``region_size`` slice of ``buf`` (the last may be short)."""
    view = byte_view(buf)
    region_size = operator.index(region_size)
    if region_size <= 0:
        raise ExtentError(f"region_size must be > 0, got {region_size}")
    return [xxhash.xxh3_64_intdigest(view[o:o + region_size]) for o in range(0, view.nbytes, region_size)]
