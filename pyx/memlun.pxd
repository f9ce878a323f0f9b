# C-level API of the memory-device request path (splitpoint.pyx.memlun).
#
# A MemoryLun holds, for one LUN, the primary device's memory, the mirror target's memory (or
# None) and the LUN's maps. write() and read() are its Python API (one call per request); the
# buffers are acquired per call, never kept exported, so the devices stay free to close.

from libc.stdint cimport uint64_t

from splitpoint.pyx.epochmap cimport EpochMap


cdef class MemoryLun:
    cdef object primary            # writable buffer of the primary device
    cdef object mirror             # writable buffer of the mirror target, or None
    cdef EpochMap epochs           # the LUN's epoch map, marked per WRITE
    cdef object zeros              # the LUN's ChunkBitmap of known-zero chunks, or None
    cdef readonly uint64_t size          # bytes of the LUN
    cdef readonly uint64_t block_size    # its block size, a power of two

    # a non-empty, in-bounds range on whole blocks
    cdef bint _in_range(self, uint64_t offset, uint64_t length) noexcept
