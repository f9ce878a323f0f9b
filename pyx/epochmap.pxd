# C-level API of the dirty-tracking kernel (splitpoint.pyx.epochmap).
#
# EpochMap keeps one uint32 per chunk ("last written in epoch", 0 = never) plus a
# summary: for every block of 2**EPOCH_BLOCK_SHIFT chunks, an upper bound of the
# epochs inside it. A scan for "epoch >= E" skips a block whose bound is < E
# without reading it, and reads the others 8 chunks (32 bytes) per compare:
#
#   epochs   |0 0 0 0 0 0 0 0|0 0 0 7 0 0 0 0|0 0 0 0 0 0 0 0|...   (one block)
#   block_max [ 7 ]  -> scanned for E <= 7, skipped in O(1) for E = 8
#
# mark() only raises a block's bound; lowering a chunk leaves the bound high,
# which costs a read, never a missed chunk. ChunkBitmap keeps bit (c % 64) of
# 64-bit word (c // 64) for chunk c; bits past nchunks are always zero.
# Every function below works on C data only, so it is nogil.

from libc.stdint cimport int64_t, uint32_t, uint64_t

# log2 of the chunks per summary block
cdef enum:
    EPOCH_BLOCK_SHIFT = 12

# first chunk in [start, end) with epochs[c] >= epoch, or -1
cdef int64_t epochs_next_since(const uint32_t* epochs, uint64_t start, uint64_t end, uint32_t epoch) noexcept nogil
# first chunk in [start, end) with epochs[c] < epoch, or end
cdef uint64_t epochs_run_end(const uint32_t* epochs, uint64_t start, uint64_t end, uint32_t epoch) noexcept nogil
# number of chunks in [start, end) with epochs[c] >= epoch
cdef uint64_t epochs_count_since(const uint32_t* epochs, uint64_t start, uint64_t end, uint32_t epoch) noexcept nogil
# first set bit in [start, end), or -1
cdef int64_t bits_next_set(const uint64_t* words, uint64_t start, uint64_t end) noexcept nogil
# first clear bit in [start, end), or end
cdef uint64_t bits_next_clear(const uint64_t* words, uint64_t start, uint64_t end) noexcept nogil
# set (value true) or clear every bit in [start, end)
cdef void bits_fill(uint64_t* words, uint64_t start, uint64_t end, bint value) noexcept nogil
# number of set bits in words[0:nwords]
cdef uint64_t bits_count(const uint64_t* words, uint64_t nwords) noexcept nogil


cdef class EpochMap:
    cdef readonly uint64_t size            # bytes covered
    cdef readonly uint64_t chunk_size      # bytes per chunk, a power of two
    cdef readonly uint64_t nchunks         # ceil(size / chunk_size)
    cdef unsigned int shift                # log2(chunk_size)
    cdef uint64_t nblocks                  # summary blocks
    cdef uint32_t* epochs                  # nchunks epochs
    cdef uint32_t* block_max               # nblocks upper bounds of the epochs in each block

    # epoch of chunks [first, end), raising their blocks' bounds; caller checked the range
    cdef void mark_chunks(self, uint64_t first, uint64_t end, uint32_t epoch) noexcept nogil
    # first chunk in [start, end) with epoch >= since (skipping clean blocks), or -1
    cdef int64_t next_since(self, uint64_t start, uint64_t end, uint32_t since) noexcept nogil
    # chunks in [start, end) with epoch >= since
    cdef uint64_t count_range(self, uint64_t start, uint64_t end, uint32_t since) noexcept nogil


cdef class ChunkBitmap:
    cdef readonly uint64_t size            # bytes covered
    cdef readonly uint64_t chunk_size      # bytes per chunk, a power of two
    cdef readonly uint64_t nchunks         # ceil(size / chunk_size)
    cdef unsigned int shift                # log2(chunk_size)
    cdef uint64_t nwords                   # ceil(nchunks / 64)
    cdef uint64_t* words                   # the bits

    # set (value true) or clear chunks [first, end); caller checked the range
    cdef void fill_chunks(self, uint64_t first, uint64_t end, bint value) noexcept nogil
    # first set chunk >= start, or -1
    cdef int64_t next_set_chunk(self, uint64_t start) noexcept nogil
