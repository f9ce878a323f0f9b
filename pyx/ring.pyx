# cython: binding=False
"""splitpoint.pyx.ring: the sequenced request queue, compiled.

Owns the Python face of the lock-free ring in sp_ring.h: one body (_Ring) whose two
classes, SPSCRing and MPSCRing, differ only in the producer discipline the C ring is
made with.  The dtype, limits and validators come from the twin, ring_py, so both
accept the same things.  The nogil load loops tests and benchmarks use are ringload's.

Nothing here takes a lock or raises on a full or empty ring.  The nogil paths never
touch a Python object; push()/pop() box each descriptor once (pop() hands back the
tuple push() built, see ring.pxd), which relies on the GIL, and batches borrow numpy
arrays through a header mirror verified at import.
"""
cimport cython
from cpython.long cimport PyLong_CheckExact
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

import numpy as np

from splitpoint.pyx.ring_py import (  # noqa: F401  (re-exported: one dtype and one set of rules for both)
    DESC_DTYPE,
    MAX_CAPACITY,
    check_fields,  # the rules _field() applies in C
    check_geometry,
    desc_array,
)


def _check_layout():
    """Refuse to load if DESC_DTYPE and the C struct sp_desc ever disagree."""
    cdef sp_desc d
    cdef char *base = <char *>&d
    c_offsets = [<char *>&d.seq - base, <char *>&d.offset - base, <char *>&d.cookie - base,
                 <char *>&d.length - base, <char *>&d.op - base, <char *>&d.flags - base]
    offsets = [DESC_DTYPE.fields[name][1] for name in ("seq", "offset", "cookie", "length", "op", "flags")]
    if offsets != c_offsets or DESC_DTYPE.itemsize != sizeof(sp_desc) or MAX_CAPACITY != SP_RING_MAX_CAPACITY:
        raise ImportError(f"ring: DESC_DTYPE offsets {offsets} / limits disagree with sp_ring.h {c_offsets}")


_check_layout()

cdef type _ndarray = np.ndarray
cdef object _desc_dtype_obj = DESC_DTYPE


cdef extern from "Python.h":
    # without Cython's error check: _field() tells an overflow from a value itself
    unsigned long long _as_u64 "PyLong_AsUnsignedLongLong"(object o)
    object _index "PyNumber_Index"(object o)
    void PyErr_Clear()
    PyObject *PyErr_Occurred()


cdef object _field(object value, unsigned long long limit, str name, str ctype,
                   unsigned long long *out):
    """`value` as the int push stores, its C value in *out; the twin's check_fields, field by field.

    A plain int converts directly; anything else goes through operator.index (TypeError for
    floats, strings, None: the same message as the twin). Out of range: the twin's OverflowError.
    """
    cdef unsigned long long v
    if not PyLong_CheckExact(value):
        value = _index(value)
    v = _as_u64(value)
    if v == <unsigned long long>-1 and PyErr_Occurred() is not NULL:
        PyErr_Clear()
        raise OverflowError(f"descriptor {name} {value} does not fit in {ctype}")
    if v > limit:
        raise OverflowError(f"descriptor {name} {value} does not fit in {ctype}")
    out[0] = v
    return value


cdef inline bint _fits(object value, unsigned long long limit, unsigned long long *out) noexcept:
    """A plain int in [0, limit] converted to *out; False (no exception left) for anything else."""
    cdef unsigned long long v
    if not PyLong_CheckExact(value):
        return False
    v = _as_u64(value)
    if v == <unsigned long long>-1 and PyErr_Occurred() is not NULL:
        PyErr_Clear()
        return False
    out[0] = v
    return v <= limit


cdef struct _Fields:
    unsigned long long op, flags, offset, length, cookie


cdef int _fields(_Fields *f, op, flags, offset, length, cookie) except -1:
    """The push fields in *f; raises what the twin's check_fields raises (see _field).

    1 when all five were plain ints in range, 0 when some went through operator.index (the
    caller then stores the converted ints, as the twin does)."""
    if (_fits(op, 0xFFFF, &f.op) and _fits(flags, 0xFFFF, &f.flags) and _fits(offset, 0xFFFFFFFFFFFFFFFF, &f.offset)
            and _fits(length, 0xFFFFFFFF, &f.length) and _fits(cookie, 0xFFFFFFFFFFFFFFFF, &f.cookie)):
        return 1
    _field(op, 0xFFFF, "op", "u16", &f.op)
    _field(flags, 0xFFFF, "flags", "u16", &f.flags)
    _field(offset, 0xFFFFFFFFFFFFFFFF, "offset", "u64", &f.offset)
    _field(length, 0xFFFFFFFF, "length", "u32", &f.length)
    _field(cookie, 0xFFFFFFFFFFFFFFFF, "cookie", "u64", &f.cookie)
    return 0


cdef extern from *:
    """
    /* The leading fields of numpy's PyArrayObject_fields (numpy/ndarraytypes.h, unchanged
       since numpy 1.7 and in 2.x).  ring.pyx checks this mirror against the buffer protocol
       at import and only then uses it: reading four fields costs ~3 ns, a buffer export ~35. */
    typedef struct {
        PyObject_HEAD
        char *data;
        int nd;
        Py_ssize_t *dimensions;
        Py_ssize_t *strides;
        PyObject *base;
        PyObject *descr;
        int flags;
    } sp_np_array_head;
    #define SP_NPY_C_CONTIGUOUS 0x0001
    #define SP_NPY_WRITEABLE 0x0400
    """
    ctypedef struct sp_np_array_head:
        char *data
        int nd
        Py_ssize_t *dimensions
        void *descr
        int flags
    int SP_NPY_C_CONTIGUOUS
    int SP_NPY_WRITEABLE


# descriptors borrowed from a Python object for the length of one call
cdef struct _Descs:
    sp_desc *p
    size_t n
    bint held           # view must be released
    Py_buffer view


cdef bint _np_head_ok = False   # set at import once the mirror above is verified


cdef inline bint _np_fast(object obj, _Descs *d) noexcept:
    """Borrow a writable contiguous 1-D ndarray of exactly DESC_DTYPE straight from its header."""
    cdef sp_np_array_head *h
    if not _np_head_ok or type(obj) is not _ndarray:
        return False
    h = <sp_np_array_head *><void *>obj
    if h.descr != <void *>_desc_dtype_obj or h.nd != 1 or \
            (h.flags & (SP_NPY_C_CONTIGUOUS | SP_NPY_WRITEABLE)) != (SP_NPY_C_CONTIGUOUS | SP_NPY_WRITEABLE):
        return False
    d.p = <sp_desc *>h.data
    d.n = <size_t>h.dimensions[0]
    d.held = False
    return True


cdef int _acquire(object descs, _Descs *d, str what) except -1:
    """Borrow the descriptors of `descs` (see ring_py.desc_array); _release() gives them back."""
    if _np_fast(descs, d):
        return 0
    PyObject_GetBuffer(desc_array(descs, what), &d.view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
    d.p = <sp_desc *>d.view.buf
    d.n = <size_t>d.view.shape[0]
    d.held = True
    return 0


cdef inline void _release(_Descs *d) noexcept:
    if d.held:
        PyBuffer_Release(&d.view)


def _check_np_head():
    """True when the numpy header mirror agrees with the buffer protocol on probe arrays."""
    cdef Py_buffer view
    cdef sp_np_array_head *h
    probe = np.zeros(3, DESC_DTYPE)
    frozen = np.zeros(3, DESC_DTYPE)
    frozen.flags.writeable = False
    strided = np.zeros(6, DESC_DTYPE)[::2]
    PyObject_GetBuffer(probe, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
    h = <sp_np_array_head *><void *>probe
    ok = (h.data == <char *>view.buf and h.nd == 1 and h.dimensions[0] == 3
          and h.descr == <void *>_desc_dtype_obj
          and h.flags & SP_NPY_C_CONTIGUOUS and h.flags & SP_NPY_WRITEABLE)
    PyBuffer_Release(&view)
    h = <sp_np_array_head *><void *>frozen
    ok = ok and h.nd == 1 and not h.flags & SP_NPY_WRITEABLE and h.flags & SP_NPY_C_CONTIGUOUS
    h = <sp_np_array_head *><void *>strided
    ok = ok and h.nd == 1 and h.dimensions[0] == 3 and not h.flags & SP_NPY_C_CONTIGUOUS
    return bool(ok)


_np_head_ok = _check_np_head()
#: True when batches borrow numpy arrays through the verified header mirror (else the buffer protocol)
_NUMPY_FAST_PATH = _np_head_ok


# ---------------------------------------------------------------- pop()'s tuple cache (see ring.pxd)

cdef inline object _boxed_push(sp_boxes *b, uint64_t seq, op, flags, offset, length, cookie):
    """The seq as an int, after keeping the descriptor's tuple for pop() (the ints are the caller's)."""
    cdef object s = seq
    cdef tuple t = (s, op, flags, offset, length, cookie)
    cdef sp_box *box
    cdef PyObject *old
    if b.slots is NULL:
        b.slots = <sp_box *>calloc(b.mask + 1, sizeof(sp_box))
        if b.slots is NULL:
            return s      # no cache: pop() boxes the descriptor itself
    box = &b.slots[(seq - b.first_seq) & b.mask]
    old = box.tuple
    Py_INCREF(t)
    box.tuple = <PyObject *>t
    box.seq = seq
    Py_XDECREF(old)
    return s


cdef inline object _boxed_pop(sp_boxes *b, sp_desc *d):
    """The descriptor as pop()'s tuple: the one push() kept when it is this very descriptor."""
    cdef sp_box *box
    cdef PyObject *kept
    if b.slots is not NULL:
        box = &b.slots[(d.seq - b.first_seq) & b.mask]
        kept = box.tuple
        if kept is not NULL:
            box.tuple = NULL
            t = <object>kept          # a new reference; drop the cache's one
            Py_DECREF(t)
            if box.seq == d.seq:      # else a nogil push reused the slot since
                return t
    return (d.seq, d.op, d.flags, d.offset, d.length, d.cookie)


cdef void _boxes_free(sp_boxes *b) noexcept:
    cdef uint64_t i
    if b.slots is not NULL:
        for i in range(b.mask + 1):
            Py_XDECREF(b.slots[i].tuple)
        free(b.slots)
        b.slots = NULL


cdef class _Ring:
    """The ring body SPSCRing and MPSCRing share; the subclass names the producer discipline."""

    def __cinit__(self, capacity, first_seq=1):
        cdef uint64_t cap, first
        if type(self) is _Ring:
            raise TypeError("make an SPSCRing or an MPSCRing, not the shared _Ring body")
        cap, first = check_geometry(capacity, first_seq)
        self.r = sp_ring_new(cap, first, isinstance(self, MPSCRing))
        if self.r is NULL:
            raise MemoryError(f"cannot allocate a ring of {cap} descriptors")
        self.boxes.mask = cap - 1
        self.boxes.first_seq = first

    def __dealloc__(self):
        _boxes_free(&self.boxes)
        sp_ring_free(self.r)

    def push(self, op, flags, offset, length, cookie):
        """Enqueue one descriptor; its seq, or -1 when the ring is full."""
        cdef uint64_t seq
        cdef _Fields f
        if not _fields(&f, op, flags, offset, length, cookie):
            op, flags, offset, length, cookie = f.op, f.flags, f.offset, f.length, f.cookie
        seq = sp_ring_push(self.r, <uint16_t>f.op, <uint16_t>f.flags, f.offset, <uint32_t>f.length, f.cookie)
        if seq == SP_RING_FULL:
            return -1
        return _boxed_push(&self.boxes, seq, op, flags, offset, length, cookie)

    def pop(self):
        """(seq, op, flags, offset, length, cookie) of the oldest descriptor, or None when empty."""
        cdef sp_desc d
        if not sp_ring_pop(self.r, &d):
            return None
        return _boxed_pop(&self.boxes, &d)

    def push_batch(self, descs):
        """Enqueue a prefix of the DESC_DTYPE array `descs` (as many as fit) at consecutive seqs,
        stamping seq in place; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(descs, &d, "push_batch")
        k = sp_ring_push_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def pop_batch(self, out):
        """Dequeue into a prefix of the DESC_DTYPE array `out`; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(out, &d, "pop_batch")
        k = sp_ring_pop_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def __len__(self):
        return sp_ring_len(self.r)

    @property
    def capacity(self):
        """Number of slots (a power of two)."""
        return sp_ring_capacity(self.r)

    @property
    def next_seq(self):
        """The seq the next push (for MPSC: the next reservation) will be stamped with."""
        return sp_ring_next_seq(self.r)

    def __repr__(self):
        return f"{type(self).__name__}(capacity={self.capacity}, len={len(self)}, next_seq={self.next_seq})"


@cython.final
cdef class SPSCRing(_Ring):
    """Single-producer/single-consumer ring of descriptors (one producer thread, one consumer thread)."""


@cython.final
cdef class MPSCRing(_Ring):
    """Multi-producer/single-consumer ring of descriptors (any producer threads, one consumer thread)."""
