# cython: binding=False, boundscheck=False, wraparound=False
"""splitpoint.pyx.memlun: a LUN's request path on memory devices, compiled (the twin memlun_py
documents the API and the rules).

One call per request: the range check, one memcpy into the primary and one into the mirror
target straight from the caller's buffer (the GIL released for bulk copies), the epoch map and
known-zero bitmap updated through their C API. Buffers are acquired for the call and released
before it returns, so a device stays free to close.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy

from splitpoint.pyx.epochmap cimport ChunkBitmap, EpochMap

cdef object _U64 = 1 << 64
cdef object _U32 = 1 << 32

# copies at least this large run without the GIL (a smaller one costs less than the release)
cdef enum:
    NOGIL_MIN = 64 * 1024


cdef class MemoryLun:
    """The memory of one LUN's primary and mirror target, with the LUN's maps (see memlun_py)."""

    def __init__(self, primary, mirror, EpochMap epochs, zeros, uint64_t size, uint64_t block_size):
        if block_size == 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        if zeros is not None and not isinstance(zeros, ChunkBitmap):
            raise TypeError("zeros must be a ChunkBitmap or None")
        for name, buf in (("primary", primary), ("mirror", mirror)):
            if buf is not None and memoryview(buf).nbytes < size:
                raise ValueError(f"the {name} buffer is smaller than the LUN ({size} bytes)")
        if epochs.size < size:
            raise ValueError("the epoch map is smaller than the LUN")
        self.primary = primary
        self.mirror = mirror
        self.epochs = epochs
        self.zeros = zeros
        self.size = size
        self.block_size = block_size

    cdef bint _in_range(self, uint64_t offset, uint64_t length) noexcept:
        return (0 < length <= self.size and offset <= self.size - length
                and not (offset | length) & (self.block_size - 1))

    def write(self, offset_, length_, data, epoch_):
        """Apply one WRITE of epoch ``epoch``: True once done, False (nothing changed) otherwise."""
        cdef Py_buffer src, dst, mir
        cdef uint64_t first, end, offset, length
        cdef ChunkBitmap zeros
        if data is None or not (0 <= offset_ < _U64 and 0 <= length_ < _U64 and 0 <= epoch_ < _U32):
            return False
        offset, length = offset_, length_
        if not self._in_range(offset, length):
            return False
        PyObject_GetBuffer(data, &src, PyBUF_SIMPLE)
        try:
            if <uint64_t>src.len != length:
                return False
            PyObject_GetBuffer(self.primary, &dst, PyBUF_WRITABLE)
            try:
                if self.mirror is None:
                    _copy(<char*>dst.buf + offset, <const char*>src.buf, length)
                else:
                    PyObject_GetBuffer(self.mirror, &mir, PyBUF_WRITABLE)
                    try:
                        if length >= NOGIL_MIN:
                            with nogil:
                                memcpy(<char*>dst.buf + offset, src.buf, length)
                                memcpy(<char*>mir.buf + offset, src.buf, length)
                        else:
                            memcpy(<char*>dst.buf + offset, src.buf, length)
                            memcpy(<char*>mir.buf + offset, src.buf, length)
                    finally:
                        PyBuffer_Release(&mir)
            finally:
                PyBuffer_Release(&dst)
        finally:
            PyBuffer_Release(&src)
        first = offset >> self.epochs.shift
        end = ((offset + length - 1) >> self.epochs.shift) + 1
        if self.zeros is not None:
            zeros = <ChunkBitmap>self.zeros
            zeros.fill_chunks(offset >> zeros.shift, ((offset + length - 1) >> zeros.shift) + 1, False)
        self.epochs.mark_chunks(first, end, <uint32_t>epoch_)
        return True

    def read(self, offset_, length_):
        """The primary's bytes of [offset, offset+length), or None (see memlun_py)."""
        cdef Py_buffer view
        cdef uint64_t offset, length
        if not (0 <= offset_ < _U64 and 0 <= length_ < _U64):
            return None
        offset, length = offset_, length_
        if not self._in_range(offset, length):
            return None
        PyObject_GetBuffer(self.primary, &view, PyBUF_SIMPLE)
        try:
            return PyBytes_FromStringAndSize(<const char*>view.buf + offset, <Py_ssize_t>length)
        finally:
            PyBuffer_Release(&view)


cdef inline void _copy(char* dst, const char* src, uint64_t n) noexcept:
    if n >= NOGIL_MIN:
        with nogil:
            memcpy(dst, src, n)
    else:
        memcpy(dst, src, n)
