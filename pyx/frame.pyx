# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Frame codec kernel: COBS, header, CRC32C and a resynchronising stream decoder.

Compiled twin of ``frame_py.py`` (same API, same bytes, same exception
classes, imported from the twin so callers can catch either). The hot loops
are the C of ``sp_frame.h`` with no Python interaction. Decoding uses one
shared scratch buffer and so keeps the GIL; encoding writes into its own
output object and releases the GIL for large frames.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memchr, memcpy

import os

from splitpoint.pyx.frame_py import (  # noqa: F401  (one set of exception classes for both)
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    MAX_ERRORS_KEPT,
    OVERHEAD,
    TRAILER_SIZE,
    VERSION,
    FrameCOBSError,
    FrameCRCError,
    FrameError,
    FrameLengthError,
    FrameTooLargeError,
    FrameTooShortError,
)

# the C API (sp_frame.h) is declared in frame.pxd

# SPLITPOINT_CRC_TABLE=1 forces the portable table loop (the one the board firmware runs)
sp_frame_init(0 if os.environ.get("SPLITPOINT_CRC_TABLE", "") == "1" else 1)
#: "sse4.2" or "table": which CRC32C loop this process runs
CRC_IMPLEMENTATION = "sse4.2" if sp_crc_uses_hw() else "table"

cdef enum:
    C_HEADER = 12   # HEADER_SIZE as a C constant
    C_OVERHEAD = 16  # header + CRC trailer

cdef extern from "Python.h":
    # an unmanaged new bytes object, so _PyBytes_Resize may shrink it in place
    PyObject *_new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *b)
    int _PyBytes_Resize(PyObject **b, Py_ssize_t n) except -1
    object _steal "(PyObject *)"(PyObject *b)  # hands our reference to Cython

cdef Py_ssize_t NOGIL_BYTES = 16384  # below this, releasing the GIL costs more than it frees


cdef inline const uint8_t[::1] _view(data):
    return data


cdef class _Scratch:
    """A growable C buffer reused across calls; callers hold the GIL while they use it."""
    cdef unsigned char *ptr
    cdef Py_ssize_t cap

    cdef unsigned char *need(self, Py_ssize_t n) except NULL:
        cdef unsigned char *p
        if n < 64:
            n = 64
        if n > self.cap:
            p = <unsigned char *>realloc(self.ptr, n)
            if p == NULL:
                raise MemoryError(f"cannot allocate {n} bytes for the frame codec")
            self.ptr = p
            self.cap = n
        return self.ptr

    def __dealloc__(self):
        free(self.ptr)


cdef _Scratch _scratch = _Scratch()


def crc32c(data, uint32_t value=0):
    """CRC32C (Castagnoli, reflected, init and xorout 0xFFFFFFFF) of ``data``, continuing from ``value``."""
    cdef const uint8_t[::1] v = _view(data)
    cdef Py_ssize_t n = v.shape[0]
    if n == 0:
        return value
    if n >= NOGIL_BYTES:
        with nogil:
            value = sp_crc32c(value, &v[0], n)
    else:
        value = sp_crc32c(value, &v[0], n)
    return value


def cobs_max_encoded(Py_ssize_t n):
    """Upper bound of the COBS encoding of ``n`` bytes (without the delimiter)."""
    return sp_cobs_max(n)


def cobs_encode(data):
    """COBS-encode ``data``: no 0x00 in the result; every zero-run segment ends with a code < 0xFF."""
    cdef const uint8_t[::1] v = _view(data)
    cdef Py_ssize_t n = v.shape[0], size
    cdef unsigned char *dst = _scratch.need(sp_cobs_max(n))
    cdef sp_cobs_enc enc
    sp_cobs_begin(&enc, dst)
    if n:
        sp_cobs_feed(&enc, &v[0], n)
    size = sp_cobs_end(&enc)
    return PyBytes_FromStringAndSize(<char *>dst, size)


def cobs_decode(data):
    """Decode one COBS block (no delimiter); raise FrameCOBSError when it is malformed."""
    cdef const uint8_t[::1] v = _view(data)
    cdef Py_ssize_t n = v.shape[0], got
    if n == 0:
        return b""
    cdef unsigned char *dst = _scratch.need(n)
    got = sp_cobs_decode(&v[0], n, dst)
    if got < 0:
        raise FrameCOBSError(f"malformed COBS at byte {-1 - got} of a {n}-byte frame")
    return PyBytes_FromStringAndSize(<char *>dst, got)


cdef _check_fields(version, type, flags, seq, length):
    if not (0 <= version <= 0xFF and 0 <= type <= 0xFF and 0 <= flags <= 0xFFFF
            and 0 <= seq <= 0xFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
        raise ValueError(f"header field out of range: version={version} type={type} flags={flags} "
                         f"seq={seq} length={length}")


def encode_header(version, type, flags, seq, length):
    """The 12-byte header; every field is range-checked (ValueError)."""
    _check_fields(version, type, flags, seq, length)
    cdef unsigned char h[12]
    sp_put_header(h, version, type, flags, seq, length)
    return PyBytes_FromStringAndSize(<char *>h, 12)


def decode_header(data):
    """(version, type, flags, seq, length) from the first 12 bytes of ``data``."""
    cdef const uint8_t[::1] v = _view(data)
    if v.shape[0] < C_HEADER:
        raise FrameTooShortError(f"header needs {HEADER_SIZE} bytes, got {v.shape[0]}")
    return (v[0], v[1], v[2] | (v[3] << 8), sp_le32(&v[4]), sp_le32(&v[8]))


def encode_frame(type, flags, seq, payload=b"", version=VERSION):
    """The wire bytes of one frame, delimiter included."""
    cdef const uint8_t[::1] p = _view(payload)
    cdef Py_ssize_t n = p.shape[0], size
    _check_fields(version, type, flags, seq, n)
    cdef unsigned int c_version = version, c_type = type, c_flags = flags
    cdef uint32_t c_seq = seq
    cdef const unsigned char *src = &p[0] if n else NULL
    # encode straight into a private bytes object (never the shared scratch: the GIL is released
    # below), then shrink it to the encoded length without a copy
    cdef PyObject *out = _new_bytes(NULL, sp_cobs_max(n + C_OVERHEAD) + 1)
    if out == NULL:
        raise MemoryError("frame encoder")
    cdef unsigned char *dst = <unsigned char *>_bytes_data(out)
    if n >= NOGIL_BYTES:
        with nogil:
            size = sp_frame_encode(dst, c_version, c_type, c_flags, c_seq, src, n)
    else:
        size = sp_frame_encode(dst, c_version, c_type, c_flags, c_seq, src, n)
    _PyBytes_Resize(&out, size)
    return _steal(out)


cdef object _error(int kind, Py_ssize_t n, Py_ssize_t got, Py_ssize_t detail, Py_ssize_t max_payload,
                   const unsigned char *raw):
    if kind == SP_FRAME_COBS:
        return FrameCOBSError(f"malformed COBS at byte {detail} of a {n}-byte frame")
    if kind == SP_FRAME_SHORT:
        return FrameTooShortError(f"frame of {got} bytes is shorter than header and CRC ({OVERHEAD})")
    if kind == SP_FRAME_LARGE:
        return FrameTooLargeError(f"payload of {detail} bytes exceeds the limit of {max_payload}")
    if kind == SP_FRAME_LENGTH:
        return FrameLengthError(f"header says {detail} payload bytes, frame carries {got - OVERHEAD}")
    return FrameCRCError(f"CRC32C mismatch: trailer {sp_le32(raw + got - 4):#010x}, "
                         f"computed {<uint32_t>detail:#010x}")


cdef inline tuple _frame_tuple(const unsigned char *raw, Py_ssize_t got):
    return (raw[0], raw[1], raw[2] | (raw[3] << 8), sp_le32(raw + 4),
            PyBytes_FromStringAndSize(<const char *>raw + C_HEADER, got - C_OVERHEAD))


def decode_frame(wire, Py_ssize_t max_payload=DEFAULT_MAX_PAYLOAD):
    """(version, type, flags, seq, payload) of one wire frame, with or without its delimiter."""
    cdef const uint8_t[::1] v = _view(wire)
    cdef Py_ssize_t n = v.shape[0], got = 0, detail = 0
    cdef int kind
    if n and v[n - 1] == 0:
        n -= 1
    if n > sp_cobs_max(max_payload + C_OVERHEAD):
        raise FrameTooLargeError(f"frame of {n} wire bytes exceeds the limit for {max_payload}-byte payloads")
    if n == 0:
        raise FrameTooShortError(f"frame of 0 bytes is shorter than header and CRC ({OVERHEAD})")
    cdef unsigned char *dst = _scratch.need(n)
    kind = sp_frame_check(&v[0], n, max_payload, dst, &got, &detail)  # GIL held: dst is shared scratch
    if kind != SP_FRAME_OK:
        raise _error(kind, n, got, detail, max_payload, dst)
    return _frame_tuple(dst, got)


cdef class FrameDecoder:
    """Streaming decoder: ``feed`` bytes as they arrive, get whole frames back.

    Frames end at 0x00. A chunk that fails to decode is counted (``rejected``,
    ``garbage_bytes`` and one per-kind counter) and kept for ``pop_errors``;
    decoding resumes after the next delimiter. Bytes beyond the largest legal
    frame without a delimiter are discarded up to the next one (``oversized``).
    """
    cdef unsigned char *_buf  # partial frame carried between feeds
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef bint _skipping
    cdef list _errors
    cdef readonly Py_ssize_t max_payload
    cdef readonly Py_ssize_t max_wire
    cdef public Py_ssize_t frames
    cdef public Py_ssize_t rejected
    cdef public Py_ssize_t garbage_bytes
    cdef public Py_ssize_t cobs_errors
    cdef public Py_ssize_t short_errors
    cdef public Py_ssize_t length_errors
    cdef public Py_ssize_t crc_errors
    cdef public Py_ssize_t oversized

    def __cinit__(self, Py_ssize_t max_payload=DEFAULT_MAX_PAYLOAD):
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, got {max_payload}")
        self.max_payload = max_payload
        self.max_wire = sp_cobs_max(max_payload + C_OVERHEAD)
        self._errors = []

    def __dealloc__(self):
        free(self._buf)

    @property
    def pending(self):
        """Bytes held while waiting for a delimiter."""
        return self._len

    def reset(self):
        """Drop any partial frame (after a reconnect); counters are kept."""
        self._len = 0
        self._skipping = False

    def pop_errors(self):
        """The rejections since the last call, newest last (at most MAX_ERRORS_KEPT)."""
        errors, self._errors = self._errors, []
        return errors

    cdef int _reject(self, object exc, Py_ssize_t nbytes) except -1:
        self.rejected += 1
        self.garbage_bytes += nbytes
        if isinstance(exc, FrameCOBSError):
            self.cobs_errors += 1
        elif isinstance(exc, FrameTooShortError):
            self.short_errors += 1
        elif isinstance(exc, FrameLengthError):
            self.length_errors += 1
        elif isinstance(exc, FrameCRCError):
            self.crc_errors += 1
        else:
            self.oversized += 1
        self._errors.append(exc)
        if len(self._errors) > MAX_ERRORS_KEPT:
            del self._errors[0]
        return 0

    cdef int _chunk(self, const unsigned char *src, Py_ssize_t n, list out) except -1:
        cdef Py_ssize_t got = 0, detail = 0
        cdef int kind
        cdef unsigned char *dst
        if self._skipping:  # the tail of an oversized run ends here
            self.garbage_bytes += n
            self._skipping = False
            return 0
        if n == 0:  # idle delimiter
            return 0
        if n > self.max_wire:
            self._reject(FrameTooLargeError(f"frame of {n} wire bytes exceeds the limit of {self.max_wire}"), n)
            return 0
        dst = _scratch.need(n)
        kind = sp_frame_check(src, n, self.max_payload, dst, &got, &detail)
        if kind == SP_FRAME_OK:
            out.append(_frame_tuple(dst, got))
            self.frames += 1
        else:
            self._reject(_error(kind, n, got, detail, self.max_payload, dst), n)
        return 0

    cdef int _keep(self, const unsigned char *src, Py_ssize_t n) except -1:
        cdef unsigned char *p
        if self._skipping:
            self.garbage_bytes += n
            return 0
        if self._len + n > self.max_wire:
            self._reject(FrameTooLargeError(f"more than {self.max_wire} bytes without a delimiter"), 0)
            self.garbage_bytes += self._len + n
            self._len = 0
            self._skipping = True
            return 0
        if self._len + n > self._cap:
            p = <unsigned char *>realloc(self._buf, self._len + n + 256)
            if p == NULL:
                raise MemoryError("frame decoder buffer")
            self._buf = p
            self._cap = self._len + n + 256
        memcpy(self._buf + self._len, src, n)
        self._len += n
        return 0

    def feed(self, data):
        """Every complete frame in the stream so far, as (version, type, flags, seq, payload) tuples."""
        cdef const uint8_t[::1] v = _view(data)
        cdef Py_ssize_t n = v.shape[0], i = 0, stop
        cdef const unsigned char *src
        cdef const unsigned char *zero
        cdef list out = []
        if n == 0:
            return out
        src = &v[0]
        while i < n:
            zero = <const unsigned char *>memchr(src + i, 0, n - i)
            if zero == NULL:
                self._keep(src + i, n - i)
                break
            stop = zero - src
            if self._len:  # finish the frame begun in an earlier feed
                self._keep(src + i, stop - i)
                if self._len:
                    self._chunk(self._buf, self._len, out)
                    self._len = 0
                else:  # it overflowed: _keep counted it and now skips to here
                    self._chunk(NULL, 0, out)
            else:
                self._chunk(src + i, stop - i, out)
            i = stop + 1
        return out
