# cython: binding=False
"""splitpoint.pyx.ring: the sequenced request queue, compiled.

Owns the Python face of the lock-free rings in sp_ring.h (SPSCRing, MPSCRing) and
produce()/consume(): producer and consumer loops that run with the GIL released so
tests and benchmarks can move millions of descriptors between threads.  The dtype,
limits and validators come from the twin, ring_py, so both accept the same things.

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
from libc.stdlib cimport calloc, free, malloc

import numpy as np

from splitpoint.pyx.ring_py import (  # noqa: F401  (re-exported: one dtype and one set of rules for both)
    DESC_DTYPE,
    MAX_CAPACITY,
    MAX_LOOP_BATCH,
    check_fields,  # the rules _field() applies in C
    check_geometry,
    check_loop_args,
    check_producer_id,
    check_producers,
    desc_array,
)

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_MONOTONIC


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


# produce()/consume() encode the producer and its counter in the cookie
cdef int _PID_SHIFT = 48
cdef uint64_t _COUNTER_MASK = (<uint64_t>1 << 48) - 1
cdef uint32_t _PRODUCED_LENGTH = 4096


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


@cython.final
cdef class SPSCRing:
    """Single-producer/single-consumer ring of descriptors (one producer thread, one consumer thread)."""

    def __cinit__(self, capacity, first_seq=1):
        cdef uint64_t cap, first
        cap, first = check_geometry(capacity, first_seq)
        self.r = sp_spsc_new(cap, first)
        if self.r is NULL:
            raise MemoryError(f"cannot allocate a ring of {cap} descriptors")
        self.boxes.mask = cap - 1
        self.boxes.first_seq = first

    def __dealloc__(self):
        _boxes_free(&self.boxes)
        sp_spsc_free(self.r)

    def push(self, op, flags, offset, length, cookie):
        """Enqueue one descriptor; its seq, or -1 when the ring is full."""
        cdef uint64_t seq
        cdef _Fields f
        if not _fields(&f, op, flags, offset, length, cookie):
            op, flags, offset, length, cookie = f.op, f.flags, f.offset, f.length, f.cookie
        seq = sp_spsc_push(self.r, <uint16_t>f.op, <uint16_t>f.flags, f.offset, <uint32_t>f.length, f.cookie)
        if seq == SP_RING_FULL:
            return -1
        return _boxed_push(&self.boxes, seq, op, flags, offset, length, cookie)

    def pop(self):
        """(seq, op, flags, offset, length, cookie) of the oldest descriptor, or None when empty."""
        cdef sp_desc d
        if not sp_spsc_pop(self.r, &d):
            return None
        return _boxed_pop(&self.boxes, &d)

    def push_batch(self, descs):
        """Enqueue a prefix of the DESC_DTYPE array `descs` (as many as fit), stamping seq in place; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(descs, &d, "push_batch")
        k = sp_spsc_push_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def pop_batch(self, out):
        """Dequeue into a prefix of the DESC_DTYPE array `out`; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(out, &d, "pop_batch")
        k = sp_spsc_pop_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def __len__(self):
        return sp_spsc_len(self.r)

    @property
    def capacity(self):
        """Number of slots (a power of two)."""
        return sp_spsc_capacity(self.r)

    @property
    def next_seq(self):
        """The seq the next push will be stamped with."""
        return sp_spsc_next_seq(self.r)

    def __repr__(self):
        return f"SPSCRing(capacity={self.capacity}, len={len(self)}, next_seq={self.next_seq})"


@cython.final
cdef class MPSCRing:
    """Multi-producer/single-consumer ring of descriptors (any producer threads, one consumer thread)."""

    def __cinit__(self, capacity, first_seq=1):
        cdef uint64_t cap, first
        cap, first = check_geometry(capacity, first_seq)
        self.r = sp_mpsc_new(cap, first)
        if self.r is NULL:
            raise MemoryError(f"cannot allocate a ring of {cap} descriptors")
        self.boxes.mask = cap - 1
        self.boxes.first_seq = first

    def __dealloc__(self):
        _boxes_free(&self.boxes)
        sp_mpsc_free(self.r)

    def push(self, op, flags, offset, length, cookie):
        """Enqueue one descriptor; its seq, or -1 when the ring is full."""
        cdef uint64_t seq
        cdef _Fields f
        if not _fields(&f, op, flags, offset, length, cookie):
            op, flags, offset, length, cookie = f.op, f.flags, f.offset, f.length, f.cookie
        seq = sp_mpsc_push(self.r, <uint16_t>f.op, <uint16_t>f.flags, f.offset, <uint32_t>f.length, f.cookie)
        if seq == SP_RING_FULL:
            return -1
        return _boxed_push(&self.boxes, seq, op, flags, offset, length, cookie)

    def pop(self):
        """(seq, op, flags, offset, length, cookie) of the oldest descriptor, or None when empty."""
        cdef sp_desc d
        if not sp_mpsc_pop(self.r, &d):
            return None
        return _boxed_pop(&self.boxes, &d)

    def push_batch(self, descs):
        """Enqueue a prefix of the DESC_DTYPE array `descs` at consecutive seqs, stamped in place; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(descs, &d, "push_batch")
        k = sp_mpsc_push_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def pop_batch(self, out):
        """Dequeue into a prefix of the DESC_DTYPE array `out`; the count."""
        cdef _Descs d
        cdef size_t k
        _acquire(out, &d, "pop_batch")
        k = sp_mpsc_pop_batch(self.r, d.p, d.n)
        _release(&d)
        return k

    def __len__(self):
        return sp_mpsc_len(self.r)

    @property
    def capacity(self):
        """Number of cells (a power of two)."""
        return sp_mpsc_capacity(self.r)

    @property
    def next_seq(self):
        """The seq the next reservation will get."""
        return sp_mpsc_next_seq(self.r)

    def __repr__(self):
        return f"MPSCRing(capacity={self.capacity}, len={len(self)}, next_seq={self.next_seq})"


# ---------------------------------------------------------------- nogil producer / consumer loops

ctypedef sp_spsc *spsc_p
ctypedef sp_mpsc *mpsc_p

ctypedef fused ring_p:
    spsc_p
    mpsc_p


cdef inline uint64_t _push(ring_p r, sp_desc *d) noexcept nogil:
    if ring_p is spsc_p:
        return sp_spsc_push(r, d.op, d.flags, d.offset, d.length, d.cookie)
    else:
        return sp_mpsc_push(r, d.op, d.flags, d.offset, d.length, d.cookie)


cdef inline size_t _push_batch(ring_p r, sp_desc *descs, size_t n) noexcept nogil:
    if ring_p is spsc_p:
        return sp_spsc_push_batch(r, descs, n)
    else:
        return sp_mpsc_push_batch(r, descs, n)


cdef inline size_t _pop_batch(ring_p r, sp_desc *out, size_t n) noexcept nogil:
    if ring_p is spsc_p:
        return sp_spsc_pop_batch(r, out, n)
    else:
        return sp_mpsc_pop_batch(r, out, n)


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint _wait(unsigned *spins, double deadline) noexcept nogil:
    """Back off while the ring is full/empty: spin briefly, then yield the core; True once past deadline."""
    spins[0] += 1
    if spins[0] < 64:
        sp_cpu_relax()
        return False
    sched_yield()
    return (spins[0] & 63) == 0 and _now() > deadline


cdef inline void _produced(sp_desc *d, uint64_t pid, uint64_t k) noexcept nogil:
    """Descriptor number k of producer pid (consume() checks every field)."""
    d.seq = 0
    d.op = <uint16_t>(k & 7)
    d.flags = <uint16_t>pid
    d.offset = k * 4096
    d.length = _PRODUCED_LENGTH
    d.cookie = (pid << _PID_SHIFT) | k


cdef uint64_t _produce(ring_p r, uint64_t n, uint64_t pid, size_t batch, sp_desc *buf,
                       double deadline) noexcept nogil:
    cdef uint64_t k = 0
    cdef size_t m, i, done
    cdef unsigned spins = 0
    cdef sp_desc d
    while k < n:
        if batch == 1:
            _produced(&d, pid, k)
            while _push(r, &d) == SP_RING_FULL:
                if _wait(&spins, deadline):
                    return k
            spins = 0
            k += 1
            continue
        m = <size_t>(n - k) if n - k < batch else batch
        for i in range(m):
            _produced(&buf[i], pid, k + i)
        done = 0
        while done < m:
            i = _push_batch(r, buf + done, m - done)
            if i == 0:
                if _wait(&spins, deadline):
                    return k + done
            else:
                spins = 0
                done += i
        k += m
    return k


cdef struct _tally:
    uint64_t count
    uint64_t seq_errors      # seq not exactly previous + 1
    uint64_t order_errors    # a producer's counter out of order, or an unknown producer
    uint64_t corrupt         # fields that disagree with the cookie
    uint64_t first_seq
    uint64_t last_seq
    uint64_t checksum        # sum of cookies mod 2**64


cdef inline void _check(_tally *t, sp_desc *d, uint64_t producers, uint64_t *next_k) noexcept nogil:
    cdef uint64_t pid = d.cookie >> _PID_SHIFT
    cdef uint64_t k = d.cookie & _COUNTER_MASK
    if t.count == 0:
        t.first_seq = d.seq
    elif d.seq != t.last_seq + 1:
        t.seq_errors += 1
    t.last_seq = d.seq
    t.count += 1
    t.checksum += d.cookie
    if pid >= producers or k != next_k[pid]:
        t.order_errors += 1
    if pid < producers:
        next_k[pid] = k + 1
    if d.op != (k & 7) or d.flags != <uint16_t>pid or d.offset != k * 4096 or d.length != _PRODUCED_LENGTH:
        t.corrupt += 1


cdef void _consume(ring_p r, uint64_t n, uint64_t producers, size_t batch, sp_desc *buf, uint64_t *next_k,
                   uint64_t *counts, _tally *t, double deadline) noexcept nogil:
    cdef size_t got, i, want
    cdef unsigned spins = 0
    cdef uint64_t pid
    while t.count < n:
        want = <size_t>(n - t.count) if n - t.count < batch else batch
        got = _pop_batch(r, buf, want)
        if got == 0:
            if _wait(&spins, deadline):
                return
            continue
        spins = 0
        for i in range(got):
            _check(t, &buf[i], producers, next_k)
            pid = buf[i].cookie >> _PID_SHIFT
            if pid < producers:
                counts[pid] += 1


def produce(ring, n, producer_id=0, batch=1, timeout=60.0):
    """Push n descriptors numbered 0..n-1 for producer `producer_id` with the GIL released,
    `batch` at a time, waiting while the ring is full; the count pushed (< n only on timeout).

    Descriptor k of producer p: cookie = p << 48 | k, offset = k * 4096, length = 4096,
    op = k & 7, flags = p.  Several threads may produce into an MPSCRing at once.
    """
    cdef uint64_t c_n, c_pid, done
    cdef size_t c_batch
    cdef double deadline
    cdef sp_desc *buf
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "produce")
    producer_id = check_producer_id(producer_id)
    c_n, c_pid, c_batch = n, producer_id, batch
    buf = <sp_desc *>malloc(c_batch * sizeof(sp_desc))
    if buf is NULL:
        raise MemoryError("produce: cannot allocate the batch buffer")
    deadline = _now() + timeout
    try:
        if isinstance(ring, SPSCRing):
            with nogil:
                done = _produce((<SPSCRing>ring).r, c_n, c_pid, c_batch, buf, deadline)
        else:
            with nogil:
                done = _produce((<MPSCRing>ring).r, c_n, c_pid, c_batch, buf, deadline)
    finally:
        free(buf)
    return done


def consume(ring, n, producers=1, batch=1, timeout=60.0):
    """Pop n descriptors made by produce() with the GIL released, `batch` at a time, checking each.

    Returns a dict: count (< n only on timeout), seq_errors (a seq that is not the previous + 1),
    order_errors (a producer's descriptors lost, duplicated or out of order, or a producer id
    >= producers), corrupt (fields that disagree with the cookie), per_producer (counts),
    first_seq, last_seq (None when nothing came) and checksum (sum of cookies mod 2**64).
    """
    cdef uint64_t c_n, c_producers
    cdef size_t c_batch
    cdef double deadline
    cdef sp_desc *buf
    cdef uint64_t *next_k
    cdef uint64_t *counts
    cdef _tally t
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "consume")
    producers = check_producers(producers)
    c_n, c_producers, c_batch = n, producers, batch
    t.count = t.seq_errors = t.order_errors = t.corrupt = t.first_seq = t.last_seq = t.checksum = 0
    buf = <sp_desc *>malloc(c_batch * sizeof(sp_desc))
    next_k = <uint64_t *>calloc(c_producers, sizeof(uint64_t))
    counts = <uint64_t *>calloc(c_producers, sizeof(uint64_t))
    try:
        if buf is NULL or next_k is NULL or counts is NULL:
            raise MemoryError("consume: cannot allocate the batch buffer")
        deadline = _now() + timeout
        if isinstance(ring, SPSCRing):
            with nogil:
                _consume((<SPSCRing>ring).r, c_n, c_producers, c_batch, buf, next_k, counts, &t, deadline)
        else:
            with nogil:
                _consume((<MPSCRing>ring).r, c_n, c_producers, c_batch, buf, next_k, counts, &t, deadline)
        per_producer = [counts[i] for i in range(c_producers)]
    finally:
        free(buf)
        free(next_k)
        free(counts)
    return {
        "count": t.count,
        "seq_errors": t.seq_errors,
        "order_errors": t.order_errors,
        "corrupt": t.corrupt,
        "per_producer": per_producer,
        "first_seq": t.first_seq if t.count else None,
        "last_seq": t.last_seq if t.count else None,
        "checksum": t.checksum,
    }
