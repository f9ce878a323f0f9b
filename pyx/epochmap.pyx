"""Dirty tracking, compiled: the per-chunk epoch map and the chunk bitmap.

Owns the chunk arithmetic of dirty tracking (which chunks a byte range touches,
merged extents of dirty runs, persistence). It never touches device data and
never decides what an epoch means: the controller does. The Python API, the
rules and the exception classes are those of the twin, ``epochmap_py``; this
module takes its validators and errors from there so both fail identically.

Scans run without the GIL over C arrays: clean summary blocks are skipped in
O(1), the rest are compared 8 chunks (32 bytes) at a time in loops the C
compiler vectorises (see epochmap.pxd for the layout).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_Check
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset

import sys

from splitpoint.pyx.epochmap_py import (  # noqa: F401  (re-exported: one set of errors for both twins)
    EPOCH_MAX,
    ChunkSizeError,
    DirtyMapError,
    EpochRangeError,
    MapSizeError,
    OutOfRangeError,
    SerialisedMapError,
    check_byte_range,
    check_chunk,
    check_epoch,
    check_geometry,
    check_window,
)

cdef extern from *:
    int __builtin_popcountll(unsigned long long) nogil
    int __builtin_ctzll(unsigned long long) nogil

cdef uint64_t BLOCK = 1 << EPOCH_BLOCK_SHIFT
cdef uint64_t ALL_ONES = 0xFFFF_FFFF_FFFF_FFFF
cdef bint LITTLE_ENDIAN = sys.byteorder == "little"


# ---------------------------------------------------------------- C kernels

cdef int64_t epochs_next_since(const uint32_t* v, uint64_t i, uint64_t end, uint32_t e) noexcept nogil:
    cdef uint32_t hit
    cdef int j
    while i < end and (i & 7):
        if v[i] >= e:
            return i
        i += 1
    # 8 compares OR-ed without branches: the compiler turns this into vector compares
    while i + 8 <= end:
        hit = 0
        for j in range(8):
            hit |= v[i + j] >= e
        if hit:
            break
        i += 8
    while i < end:
        if v[i] >= e:
            return i
        i += 1
    return -1


cdef uint64_t epochs_run_end(const uint32_t* v, uint64_t i, uint64_t end, uint32_t e) noexcept nogil:
    cdef uint32_t every
    cdef int j
    while i < end and (i & 7):
        if v[i] < e:
            return i
        i += 1
    while i + 8 <= end:
        every = 1
        for j in range(8):
            every &= v[i + j] >= e
        if not every:
            break
        i += 8
    while i < end:
        if v[i] < e:
            return i
        i += 1
    return end


cdef uint64_t epochs_count_since(const uint32_t* v, uint64_t start, uint64_t end, uint32_t e) noexcept nogil:
    cdef uint64_t i
    cdef uint32_t n = 0
    cdef uint64_t total = 0
    # a 32-bit accumulator keeps the vector lanes narrow; flushed before it could overflow
    while start < end:
        n = 0
        for i in range(start, min(end, start + (1 << 30))):
            n += v[i] >= e
        total += n
        start = min(end, start + (1 << 30))
    return total


cdef int64_t bits_next_set(const uint64_t* words, uint64_t start, uint64_t end) noexcept nogil:
    if start >= end:
        return -1
    cdef uint64_t w = start >> 6
    cdef uint64_t last = (end - 1) >> 6
    cdef uint64_t x = words[w] & (ALL_ONES << (start & 63))
    cdef uint64_t c
    while True:
        if x:
            c = (w << 6) + <uint64_t>__builtin_ctzll(x)
            return <int64_t>c if c < end else -1
        w += 1
        if w > last:
            return -1
        x = words[w]


cdef uint64_t bits_next_clear(const uint64_t* words, uint64_t start, uint64_t end) noexcept nogil:
    if start >= end:
        return end
    cdef uint64_t w = start >> 6
    cdef uint64_t last = (end - 1) >> 6
    cdef uint64_t x = ~words[w] & (ALL_ONES << (start & 63))
    cdef uint64_t c
    while True:
        if x:
            c = (w << 6) + <uint64_t>__builtin_ctzll(x)
            return c if c < end else end
        w += 1
        if w > last:
            return end
        x = ~words[w]


cdef void bits_fill(uint64_t* words, uint64_t start, uint64_t end, bint value) noexcept nogil:
    if start >= end:
        return
    cdef uint64_t fw = start >> 6
    cdef uint64_t lw = (end - 1) >> 6
    cdef uint64_t head = ALL_ONES << (start & 63)
    cdef uint64_t tail = ALL_ONES >> (63 - ((end - 1) & 63))
    if fw == lw:
        head &= tail
    if value:
        words[fw] |= head
    else:
        words[fw] &= ~head
    if fw == lw:
        return
    if lw > fw + 1:
        memset(&words[fw + 1], 0xFF if value else 0, (lw - fw - 1) * 8)
    if value:
        words[lw] |= tail
    else:
        words[lw] &= ~tail


cdef uint64_t bits_count(const uint64_t* words, uint64_t nwords) noexcept nogil:
    cdef uint64_t i, total = 0
    for i in range(nwords):
        total += <uint64_t>__builtin_popcountll(words[i])
    return total


# ---------------------------------------------------------------- argument fast paths
# Plain in-range ints are converted in C; anything else goes to the twin's validators,
# which raise the exact error the twin raises.

cdef inline bint _u64(object value, uint64_t* out):
    if not PyLong_Check(value):   # Cython would also convert floats; the twin's operator.index refuses them
        return False
    try:
        out[0] = value
        return True
    except (OverflowError, TypeError):
        return False


cdef inline bint _byte_range(object offset, object length, uint64_t size, uint64_t* out) except -1:
    """out[0:2] = (offset, length), checked against [0, size]."""
    if _u64(offset, &out[0]) and _u64(length, &out[1]) and out[0] <= size and out[1] <= size - out[0]:
        return True
    out[0], out[1] = check_byte_range(offset, length, size)
    return True


cdef inline uint32_t _epoch(object epoch) except? 0xFFFFFFFF:
    cdef uint64_t e = 0
    if _u64(epoch, &e) and e <= 0xFFFF_FFFF:
        return <uint32_t>e
    return check_epoch(epoch)


cdef inline uint64_t _chunk(object chunk, uint64_t nchunks) except? 0xFFFFFFFFFFFFFFFF:
    cdef uint64_t c = 0
    if _u64(chunk, &c) and c < nchunks:
        return c
    return check_chunk(chunk, nchunks)


cdef inline int _window(object start, object limit, uint64_t nchunks, uint64_t* out) except -1:
    """out[0:2] = (start, end) chunks of a scan window."""
    if _u64(start, &out[0]) and out[0] <= nchunks:
        if limit is None:
            out[1] = nchunks
            return 0
        if _u64(limit, &out[1]) and out[1] >= out[0]:
            out[1] = min(out[1], nchunks)
            return 0
    out[0], out[1] = check_window(start, limit, nchunks)
    return 0


cdef list _extent_list(uint64_t* runs, uint64_t n, unsigned int shift, uint64_t size):
    """Python list of (offset, length) from n (first, end) chunk pairs, clipped to size."""
    cdef list out = []
    cdef uint64_t i, off, end
    for i in range(n):
        off = runs[2 * i] << shift
        end = min(runs[2 * i + 1] << shift, size)
        out.append((off, end - off))
    return out


cdef inline int _grow(uint64_t** runs, uint64_t* cap) noexcept nogil:
    """Double the (first, end) pair buffer; 0 on success, -1 when out of memory."""
    cdef uint64_t new_cap = cap[0] * 2 if cap[0] else 256
    cdef uint64_t* grown = <uint64_t*>realloc(runs[0], new_cap * 2 * sizeof(uint64_t))
    if grown == NULL:
        return -1
    runs[0] = grown
    cap[0] = new_cap
    return 0


# ---------------------------------------------------------------- EpochMap

cdef class EpochMap:
    """One uint32 per chunk: the epoch in which the chunk was last written (0 = never)."""

    def __cinit__(self, size, chunk_size):
        size, chunk_size, nchunks = check_geometry(size, chunk_size)
        self.size = size
        self.chunk_size = chunk_size
        self.nchunks = nchunks
        self.shift = chunk_size.bit_length() - 1
        self.nblocks = (self.nchunks + BLOCK - 1) >> EPOCH_BLOCK_SHIFT
        self.epochs = <uint32_t*>calloc(self.nchunks, sizeof(uint32_t))
        self.block_max = <uint32_t*>calloc(self.nblocks, sizeof(uint32_t))
        if self.epochs == NULL or self.block_max == NULL:
            raise MemoryError(f"no memory for an epoch map of {self.nchunks} chunks")

    def __dealloc__(self):
        free(self.epochs)
        free(self.block_max)

    def __len__(self):
        return self.nchunks

    def __repr__(self):
        return f"EpochMap(size={self.size}, chunk_size={self.chunk_size})"

    cdef void mark_chunks(self, uint64_t first, uint64_t end, uint32_t epoch) noexcept nogil:
        cdef uint64_t i, b
        for i in range(first, end):
            self.epochs[i] = epoch
        for b in range(first >> EPOCH_BLOCK_SHIFT, ((end - 1) >> EPOCH_BLOCK_SHIFT) + 1):
            if self.block_max[b] < epoch:
                self.block_max[b] = epoch

    cdef int64_t next_since(self, uint64_t start, uint64_t end, uint32_t since) noexcept nogil:
        cdef uint64_t bend
        cdef int64_t found
        while start < end:
            bend = min(((start >> EPOCH_BLOCK_SHIFT) + 1) << EPOCH_BLOCK_SHIFT, end)
            if self.block_max[start >> EPOCH_BLOCK_SHIFT] >= since:
                found = epochs_next_since(self.epochs, start, bend, since)
                if found >= 0:
                    return found
            start = bend
        return -1

    cdef uint64_t count_range(self, uint64_t start, uint64_t end, uint32_t since) noexcept nogil:
        cdef uint64_t bend, total = 0
        while start < end:
            bend = min(((start >> EPOCH_BLOCK_SHIFT) + 1) << EPOCH_BLOCK_SHIFT, end)
            if self.block_max[start >> EPOCH_BLOCK_SHIFT] >= since:
                total += epochs_count_since(self.epochs, start, bend, since)
            start = bend
        return total

    def mark(self, offset, length, epoch):
        """Every chunk the byte range touches gets ``epoch``; a zero-length range does nothing."""
        cdef uint64_t r[2]
        _byte_range(offset, length, self.size, r)
        cdef uint32_t e = _epoch(epoch)
        if r[1] == 0:
            return
        cdef uint64_t first = r[0] >> self.shift
        cdef uint64_t end = ((r[0] + r[1] - 1) >> self.shift) + 1
        if end - first < 65536:
            self.mark_chunks(first, end, e)
        else:
            with nogil:
                self.mark_chunks(first, end, e)

    def extents_since(self, epoch, start=0, limit=None):
        """Byte extents of merged runs of chunks in [start, limit) whose epoch >= ``epoch``."""
        cdef uint32_t e = _epoch(epoch)
        cdef uint64_t w[2]
        _window(start, limit, self.nchunks, w)
        cdef uint64_t* runs = NULL
        cdef uint64_t n = 0, cap = 0, i = w[0]
        cdef int64_t first
        cdef bint oom = False
        try:
            with nogil:
                while True:
                    first = self.next_since(i, w[1], e)
                    if first < 0:
                        break
                    i = epochs_run_end(self.epochs, first + 1, w[1], e)
                    if n == cap and _grow(&runs, &cap) < 0:
                        oom = True
                        break
                    runs[2 * n] = first
                    runs[2 * n + 1] = i
                    n += 1
            if oom:
                raise MemoryError(f"no memory for {n * 2} dirty extents")
            return _extent_list(runs, n, self.shift, self.size)
        finally:
            free(runs)

    def count_since(self, epoch):
        """How many chunks have an epoch >= ``epoch``."""
        cdef uint32_t e = _epoch(epoch)
        cdef uint64_t n
        with nogil:
            n = self.count_range(0, self.nchunks, e)
        return n

    def get(self, chunk):
        """The epoch of one chunk."""
        return self.epochs[_chunk(chunk, self.nchunks)]

    def set_all(self, epoch):
        """Every chunk gets ``epoch`` (a member whose state is unknown: everything is dirty)."""
        cdef uint32_t e = _epoch(epoch)
        cdef uint64_t i
        with nogil:
            for i in range(self.nchunks):
                self.epochs[i] = e
            for i in range(self.nblocks):
                self.block_max[i] = e

    def clear(self):
        """Every chunk back to 0 (never written)."""
        memset(self.epochs, 0, self.nchunks * sizeof(uint32_t))
        memset(self.block_max, 0, self.nblocks * sizeof(uint32_t))

    def to_bytes(self):
        """The map as little-endian uint32, one per chunk."""
        out = PyBytes_FromStringAndSize(NULL, self.nchunks * 4)
        cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
        cdef uint64_t i
        if LITTLE_ENDIAN:
            memcpy(p, self.epochs, self.nchunks * 4)
        else:
            for i in range(self.nchunks):
                p[4 * i] = self.epochs[i] & 0xFF
                p[4 * i + 1] = (self.epochs[i] >> 8) & 0xFF
                p[4 * i + 2] = (self.epochs[i] >> 16) & 0xFF
                p[4 * i + 3] = self.epochs[i] >> 24
        return out

    @classmethod
    def from_bytes(cls, size, chunk_size, data):
        """A map of this geometry loaded from ``to_bytes()`` output."""
        cdef EpochMap emap = cls(size, chunk_size)
        cdef const uint8_t[::1] src = memoryview(data).cast("B")
        if <uint64_t>src.shape[0] != emap.nchunks * 4:
            raise SerialisedMapError(
                f"epoch map of {emap.nchunks} chunks needs {emap.nchunks * 4} bytes, got {src.shape[0]}")
        cdef uint64_t i
        cdef uint32_t v
        with nogil:
            for i in range(emap.nchunks):
                v = (<uint32_t>src[4 * i] | (<uint32_t>src[4 * i + 1] << 8) | (<uint32_t>src[4 * i + 2] << 16)
                     | (<uint32_t>src[4 * i + 3] << 24))
                emap.epochs[i] = v
                if emap.block_max[i >> EPOCH_BLOCK_SHIFT] < v:
                    emap.block_max[i >> EPOCH_BLOCK_SHIFT] = v
        return emap


# ---------------------------------------------------------------- ChunkBitmap

cdef int _fill_bytes(ChunkBitmap bm, object offset, object length, bint value) except -1:
    """Set or clear every chunk of bm the byte range touches."""
    cdef uint64_t r[2]
    _byte_range(offset, length, bm.size, r)
    if r[1]:
        bits_fill(bm.words, r[0] >> bm.shift, ((r[0] + r[1] - 1) >> bm.shift) + 1, value)
    return 0


cdef class ChunkBitmap:
    """One bit per chunk: the pending set of a resync."""

    def __cinit__(self, size, chunk_size):
        size, chunk_size, nchunks = check_geometry(size, chunk_size)
        self.size = size
        self.chunk_size = chunk_size
        self.nchunks = nchunks
        self.shift = chunk_size.bit_length() - 1
        self.nwords = (self.nchunks + 63) >> 6
        self.words = <uint64_t*>calloc(self.nwords, sizeof(uint64_t))
        if self.words == NULL:
            raise MemoryError(f"no memory for a bitmap of {self.nchunks} chunks")

    def __dealloc__(self):
        free(self.words)

    def __len__(self):
        return self.nchunks

    def __repr__(self):
        return f"ChunkBitmap(size={self.size}, chunk_size={self.chunk_size})"

    cdef void fill_chunks(self, uint64_t first, uint64_t end, bint value) noexcept nogil:
        bits_fill(self.words, first, end, value)

    cdef int64_t next_set_chunk(self, uint64_t start) noexcept nogil:
        return bits_next_set(self.words, start, self.nchunks)

    def set_range(self, offset, length):
        """Set every chunk the byte range touches; a zero-length range does nothing."""
        _fill_bytes(self, offset, length, True)

    def clear_range(self, offset, length):
        """Clear every chunk the byte range touches; a zero-length range does nothing."""
        _fill_bytes(self, offset, length, False)

    def set_all(self):
        bits_fill(self.words, 0, self.nchunks, True)

    def clear(self):
        memset(self.words, 0, self.nwords * 8)

    def test(self, chunk):
        cdef uint64_t c = _chunk(chunk, self.nchunks)
        return bool((self.words[c >> 6] >> (c & 63)) & 1)

    def clear_chunk(self, chunk):
        cdef uint64_t c = _chunk(chunk, self.nchunks)
        self.words[c >> 6] &= ~(<uint64_t>1 << (c & 63))

    def count(self):
        """How many chunks are set."""
        return bits_count(self.words, self.nwords)

    def extents(self, start=0, limit=None):
        """Byte extents of merged runs of set chunks in [start, limit)."""
        cdef uint64_t w[2]
        _window(start, limit, self.nchunks, w)
        cdef uint64_t* runs = NULL
        cdef uint64_t n = 0, cap = 0, i = w[0]
        cdef int64_t first
        cdef bint oom = False
        try:
            with nogil:
                while True:
                    first = bits_next_set(self.words, i, w[1])
                    if first < 0:
                        break
                    i = bits_next_clear(self.words, first + 1, w[1])
                    if n == cap and _grow(&runs, &cap) < 0:
                        oom = True
                        break
                    runs[2 * n] = first
                    runs[2 * n + 1] = i
                    n += 1
            if oom:
                raise MemoryError(f"no memory for {n * 2} pending extents")
            return _extent_list(runs, n, self.shift, self.size)
        finally:
            free(runs)

    def next_set(self, start_chunk):
        """The first set chunk >= ``start_chunk`` (0..nchunks), or -1 when none."""
        cdef uint64_t w[2]
        _window(start_chunk, None, self.nchunks, w)
        return bits_next_set(self.words, w[0], self.nchunks)

    def to_bytes(self):
        """The bitmap as little-endian 64-bit words, chunk i at bit i % 64 of word i // 64."""
        out = PyBytes_FromStringAndSize(NULL, self.nwords * 8)
        cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
        cdef uint64_t i
        cdef int k
        if LITTLE_ENDIAN:
            memcpy(p, self.words, self.nwords * 8)
        else:
            for i in range(self.nwords):
                for k in range(8):
                    p[8 * i + k] = (self.words[i] >> (8 * k)) & 0xFF
        return out

    @classmethod
    def from_bytes(cls, size, chunk_size, data):
        """A bitmap of this geometry loaded from ``to_bytes()`` output."""
        cdef ChunkBitmap bm = cls(size, chunk_size)
        cdef const uint8_t[::1] src = memoryview(data).cast("B")
        if <uint64_t>src.shape[0] != bm.nwords * 8:
            raise SerialisedMapError(f"bitmap of {bm.nchunks} chunks needs {bm.nwords * 8} bytes, got {src.shape[0]}")
        cdef uint64_t i, word
        cdef int k
        for i in range(bm.nwords):
            word = 0
            for k in range(8):
                word |= <uint64_t>src[8 * i + k] << (8 * k)
            bm.words[i] = word
        if bm.nchunks & 63 and bm.words[bm.nwords - 1] >> (bm.nchunks & 63):
            raise SerialisedMapError(
                f"bitmap data has bits set past chunk {bm.nchunks - 1}: corrupt or wrong geometry")
        return bm
