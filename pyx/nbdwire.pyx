# cython: binding=False, boundscheck=False, wraparound=False
"""splitpoint.pyx.nbdwire: NBD request scanning, compiled (the twin nbdwire_py documents the API).

One call cuts every complete request out of a receive buffer: headers are read straight from
the buffer's memory, small WRITE payloads become bytes with one memcpy, large ones slices of
the caller's buffer. The rules and the range check come from the twin.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from splitpoint.pyx.nbdwire_py import CMD_WRITE, HEADER, REQUEST_MAGIC, check_range

# scan() compares against these as C literals
if (REQUEST_MAGIC, HEADER, CMD_WRITE) != (0x25609513, 28, 1):
    raise ImportError("nbdwire: the twin's request layout differs from the literals scan() uses")


def scan(buf, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t lend_min, Py_ssize_t max_write):
    """Every complete request in ``buf[pos:end]``: (requests, pos, want); see nbdwire_py."""
    cdef Py_buffer view
    cdef const uint8_t *p
    cdef uint32_t length
    cdef uint16_t cmd
    cdef Py_ssize_t start, stop
    cdef list out = []
    PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE)
    try:
        check_range(view.len, pos, end)
        p = <const uint8_t *>view.buf
        while end - pos >= 28:
            if be32(p + pos) != 0x25609513:
                return out, pos, 0
            cmd = be16(p + pos + 6)
            length = be32(p + pos + 24)
            if cmd == 1:
                if length > max_write:
                    return out, pos, 0
                start = pos + 28
                stop = start + length
                if stop > end:
                    return out, pos, 28 + <Py_ssize_t>length
                if length >= lend_min:
                    payload = buf[start:stop]
                else:
                    payload = PyBytes_FromStringAndSize(<const char *>p + start, length)
                out.append((cmd, be16(p + pos + 4), be64(p + pos + 8), be64(p + pos + 16), length, payload))
                pos = stop
            else:
                out.append((cmd, be16(p + pos + 4), be64(p + pos + 8), be64(p + pos + 16), length, None))
                pos += 28
        return out, pos, 28
    finally:
        PyBuffer_Release(&view)
