"""Dirty tracking, pure-Python twin of ``epochmap.pyx``: the per-chunk epoch map and the chunk bitmap.

Owns the chunk arithmetic of dirty tracking (which chunks a byte range touches,
merged extents of dirty runs, persistence). It never touches device data and
never decides what an epoch means: the controller does.

Rules both implementations share (the tests hold them to it):
- ``chunk_size`` is a power of two, ``size`` > 0; the last chunk may be partial
  and extents are clipped to ``size``.
- A byte range ``(offset, length)`` must lie inside ``[0, size]``; a zero-length
  range is checked and then does nothing.
- Scans take ``start``/``limit`` in chunks: ``limit`` is the exclusive end chunk
  (None = the end of the map; a limit past the end is clipped like a slice).
- Epochs are uint32 (0 = never written).
- A map belongs to one thread at a time (the controller's owner thread): the
  compiled scans release the GIL but take no lock.

The compiled module raises these same exception classes (it imports them from here).
"""
from __future__ import annotations

import operator

import numpy as np

#: the largest epoch a map can hold
EPOCH_MAX = 0xFFFF_FFFF


class DirtyMapError(ValueError):
    """Base of every error raised by an epoch map or chunk bitmap."""


class ChunkSizeError(DirtyMapError):
    """chunk_size is not a positive power of two."""


class MapSizeError(DirtyMapError):
    """size is not a positive number of bytes."""


class OutOfRangeError(DirtyMapError, IndexError):
    """A byte range, chunk index or scan window lies outside the map."""


class EpochRangeError(DirtyMapError):
    """An epoch outside 0 .. EPOCH_MAX."""


class SerialisedMapError(DirtyMapError):
    """Persisted bytes do not match the geometry they are loaded into."""


def check_geometry(size, chunk_size) -> tuple[int, int, int]:
    """(size, chunk_size, nchunks) after validating both; shared by both implementations."""
    size = operator.index(size)
    chunk_size = operator.index(chunk_size)
    if chunk_size <= 0 or chunk_size & (chunk_size - 1) or chunk_size >> 64:
        raise ChunkSizeError(f"chunk_size must be a power of two below 2**64, got {chunk_size}")
    if size <= 0:
        raise MapSizeError(f"size must be > 0 bytes, got {size}")
    if size >> 64:
        raise MapSizeError(f"size {size} does not fit in 64 bits")
    return size, chunk_size, (size + chunk_size - 1) // chunk_size


def check_epoch(epoch) -> int:
    epoch = operator.index(epoch)
    if not 0 <= epoch <= EPOCH_MAX:
        raise EpochRangeError(f"epoch {epoch} outside 0..{EPOCH_MAX} (uint32)")
    return epoch


def check_byte_range(offset, length, size) -> tuple[int, int]:
    offset = operator.index(offset)
    length = operator.index(length)
    if offset < 0 or length < 0:
        raise OutOfRangeError(f"negative byte range: offset {offset}, length {length}")
    if offset + length > size:
        raise OutOfRangeError(f"byte range {offset}+{length} ends past the map size {size}")
    return offset, length


def check_chunk(chunk, nchunks) -> int:
    chunk = operator.index(chunk)
    if not 0 <= chunk < nchunks:
        raise OutOfRangeError(f"chunk {chunk} outside 0..{nchunks - 1}")
    return chunk


def check_window(start, limit, nchunks) -> tuple[int, int]:
    """(start, end) chunks of a scan window: 0 <= start <= nchunks, limit >= start, clipped to nchunks."""
    start = operator.index(start)
    if not 0 <= start <= nchunks:
        raise OutOfRangeError(f"scan start chunk {start} outside 0..{nchunks}")
    if limit is None:
        return start, nchunks
    limit = operator.index(limit)
    if limit < start:
        raise OutOfRangeError(f"scan limit chunk {limit} is before start chunk {start}")
    return start, min(limit, nchunks)


def _zeros(n: int, dtype, what: str) -> np.ndarray:
    try:
        return np.zeros(n, dtype=dtype)
    except (MemoryError, ValueError):   # numpy says ValueError for lengths it cannot even describe
        raise MemoryError(f"no memory for {what} of {n} chunks") from None


def _runs(mask: np.ndarray, first_chunk: int, chunk_size: int, size: int) -> list[tuple[int, int]]:
    """Merged byte extents of the True runs of ``mask`` (chunk ``first_chunk`` onwards)."""
    if not mask.any():
        return []
    edges = np.diff(mask.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = (np.flatnonzero(edges == 1) + first_chunk).astype(np.uint64) * np.uint64(chunk_size)
    ends = (np.flatnonzero(edges == -1) + first_chunk).astype(np.uint64) * np.uint64(chunk_size)
    np.minimum(ends, np.uint64(size), out=ends)
    return list(zip(starts.tolist(), (ends - starts).tolist()))


class EpochMap:
    """One uint32 per chunk: the epoch in which the chunk was last written (0 = never)."""

    def __init__(self, size: int, chunk_size: int):
        self.size, self.chunk_size, self.nchunks = check_geometry(size, chunk_size)
        self._shift = self.chunk_size.bit_length() - 1
        self._epochs = _zeros(self.nchunks, np.uint32, "an epoch map")

    def __len__(self) -> int:
        return self.nchunks

    def __repr__(self) -> str:
        return f"EpochMap(size={self.size}, chunk_size={self.chunk_size})"

    def mark(self, offset: int, length: int, epoch: int) -> None:
        """Every chunk the byte range touches gets ``epoch``; a zero-length range does nothing."""
        offset, length = check_byte_range(offset, length, self.size)
        epoch = check_epoch(epoch)
        if length:
            self._epochs[offset >> self._shift:((offset + length - 1) >> self._shift) + 1] = epoch

    def extents_since(self, epoch: int, start: int = 0, limit: int | None = None) -> list[tuple[int, int]]:
        """Byte extents of merged runs of chunks in [start, limit) whose epoch >= ``epoch``."""
        epoch = check_epoch(epoch)
        start, end = check_window(start, limit, self.nchunks)
        return _runs(self._epochs[start:end] >= epoch, start, self.chunk_size, self.size)

    def count_since(self, epoch: int) -> int:
        """How many chunks have an epoch >= ``epoch``."""
        return int(np.count_nonzero(self._epochs >= check_epoch(epoch)))

    def get(self, chunk: int) -> int:
        """The epoch of one chunk."""
        return int(self._epochs[check_chunk(chunk, self.nchunks)])

    def set_all(self, epoch: int) -> None:
        """Every chunk gets ``epoch`` (a member whose state is unknown: everything is dirty)."""
        self._epochs.fill(check_epoch(epoch))

    def clear(self) -> None:
        """Every chunk back to 0 (never written)."""
        self._epochs.fill(0)

    def to_bytes(self) -> bytes:
        """The map as little-endian uint32, one per chunk."""
        return self._epochs.astype("<u4", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, size: int, chunk_size: int, data) -> "EpochMap":
        """A map of this geometry loaded from ``to_bytes()`` output."""
        emap = cls(size, chunk_size)
        view = memoryview(data)
        if view.nbytes != emap.nchunks * 4:
            raise SerialisedMapError(
                f"epoch map of {emap.nchunks} chunks needs {emap.nchunks * 4} bytes, got {view.nbytes}")
        emap._epochs[:] = np.frombuffer(view.cast("B"), dtype="<u4")
        return emap


class ChunkBitmap:
    """One bit per chunk: the pending set of a resync."""

    def __init__(self, size: int, chunk_size: int):
        self.size, self.chunk_size, self.nchunks = check_geometry(size, chunk_size)
        self._shift = self.chunk_size.bit_length() - 1
        self._bits = _zeros(self.nchunks, np.bool_, "a bitmap")

    def __len__(self) -> int:
        return self.nchunks

    def __repr__(self) -> str:
        return f"ChunkBitmap(size={self.size}, chunk_size={self.chunk_size})"

    def _chunks(self, offset, length) -> slice:
        offset, length = check_byte_range(offset, length, self.size)
        if not length:
            return slice(0, 0)
        return slice(offset >> self._shift, ((offset + length - 1) >> self._shift) + 1)

    def set_range(self, offset: int, length: int) -> None:
        """Set every chunk the byte range touches; a zero-length range does nothing."""
        self._bits[self._chunks(offset, length)] = True

    def set_all(self) -> None:
        self._bits.fill(True)

    def test(self, chunk: int) -> bool:
        return bool(self._bits[check_chunk(chunk, self.nchunks)])

    def clear_chunk(self, chunk: int) -> None:
        self._bits[check_chunk(chunk, self.nchunks)] = False

    def clear_range(self, offset: int, length: int) -> None:
        """Clear every chunk the byte range touches; a zero-length range does nothing."""
        self._bits[self._chunks(offset, length)] = False

    def clear(self) -> None:
        self._bits.fill(False)

    def count(self) -> int:
        """How many chunks are set."""
        return int(np.count_nonzero(self._bits))

    def extents(self, start: int = 0, limit: int | None = None) -> list[tuple[int, int]]:
        """Byte extents of merged runs of set chunks in [start, limit)."""
        start, end = check_window(start, limit, self.nchunks)
        return _runs(self._bits[start:end], start, self.chunk_size, self.size)

    def next_set(self, start_chunk: int) -> int:
        """The first set chunk >= ``start_chunk`` (0..nchunks), or -1 when none."""
        start, _ = check_window(start_chunk, None, self.nchunks)
        if start == self.nchunks:
            return -1
        rel = int(np.argmax(self._bits[start:]))
        return start + rel if self._bits[start + rel] else -1

    def to_bytes(self) -> bytes:
        """The bitmap as little-endian 64-bit words, chunk i at bit i % 64 of word i // 64."""
        packed = np.packbits(self._bits, bitorder="little").tobytes()
        return packed + bytes(_bitmap_nbytes(self.nchunks) - len(packed))

    @classmethod
    def from_bytes(cls, size: int, chunk_size: int, data) -> "ChunkBitmap":
        """A bitmap of this geometry loaded from ``to_bytes()`` output."""
        bm = cls(size, chunk_size)
        view = memoryview(data).cast("B")
        need = _bitmap_nbytes(bm.nchunks)
        if view.nbytes != need:
            raise SerialisedMapError(f"bitmap of {bm.nchunks} chunks needs {need} bytes, got {view.nbytes}")
        bits = np.unpackbits(np.frombuffer(view, dtype=np.uint8), bitorder="little").astype(np.bool_)
        if bits[bm.nchunks:].any():
            raise SerialisedMapError(f"bitmap data has bits set past chunk {bm.nchunks - 1}: corrupt or wrong geometry")
        bm._bits[:] = bits[:bm.nchunks]
        return bm


def _bitmap_nbytes(nchunks: int) -> int:
    return (nchunks + 63) // 64 * 8
