# nbdwire.pxd: C-level API of the NBD request scanner (nbdwire.pyx).
#
# NBD integers are big-endian; these read one from a byte pointer without alignment
# assumptions and without the GIL. A request header (28 bytes) at p:
#
#     p+0  magic u32 | p+4 flags u16 | p+6 type u16 | p+8 cookie u64 | p+16 offset u64 | p+24 length u32

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


# big-endian u16 at p
cdef inline uint16_t be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


# big-endian u32 at p
cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


# big-endian u64 at p
cdef inline uint64_t be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)
