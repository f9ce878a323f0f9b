# C-level API of the block copy kernel (splitpoint.pyx.blockcopy).
#
# An extent is (offset, length) in bytes, the same offset in both buffers.
# The Python layer validates every extent against both buffers first, then
# runs these on raw pointers without the GIL; none of them checks bounds.
#
#   src  |....AAAA....BBBBBB..CC|      extents (4,4) (12,6) (20,2)
#   dst  |....AAAA....BBBBBB..CC|      merged first: (12,6)+(18,2) -> (12,8)

from libc.stdint cimport uint64_t

# one extent: bytes [offset, offset + length) of both buffers
ctypedef struct sp_extent:
    uint64_t offset    # byte offset
    uint64_t length    # byte count

# sort by offset and join adjacent or overlapping extents in place; drops empty ones; returns the new count
cdef Py_ssize_t extents_merge(sp_extent* ext, Py_ssize_t n) noexcept nogil
# 1 when every extent lies inside a buffer of size bytes
cdef bint extents_within(const sp_extent* ext, Py_ssize_t n, uint64_t size) noexcept nogil
# copy each extent from src to dst (memmove when the buffers may overlap); returns the bytes copied
cdef uint64_t extents_copy(unsigned char* dst, const unsigned char* src, const sp_extent* ext, Py_ssize_t n,
                           bint overlap) noexcept nogil
# differs[i] = 1 when extent i differs between a and b, else 0; returns how many differ
cdef Py_ssize_t extents_compare(const unsigned char* a, const unsigned char* b, const sp_extent* ext, Py_ssize_t n,
                                unsigned char* differs) noexcept nogil
# copy each extent from file sfd to file dfd at the same offsets: copy_file_range, else pread/pwrite
# through *bounce (FILE_BOUNCE bytes, malloc'd on first need; the caller frees it); past the source's
# end, zeros; returns 0, an errno, or -1 when the bounce buffer cannot be allocated
cdef int files_copy(int sfd, int dfd, const sp_extent* ext, Py_ssize_t n, unsigned char** bounce) noexcept nogil
