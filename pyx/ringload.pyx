# cython: binding=False
"""splitpoint.pyx.ringload: nogil load loops over the compiled ring, for tests and benchmarks.

Owns produce()/consume(): a producer and a consumer loop that run with the GIL released,
so tests and benchmarks can move millions of descriptors between threads and check every
one (the descriptor encoding is in the twin, ringload_py).  They take the rings of
splitpoint.pyx.ring only; the controller never uses this module.
"""
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc

from splitpoint.pyx.ring cimport (SP_RING_FULL, _Ring, sp_cpu_relax, sp_desc, sp_ring, sp_ring_pop_batch,
                                  sp_ring_push, sp_ring_push_batch)

from splitpoint.pyx.ring import MPSCRing, SPSCRing
from splitpoint.pyx.ringload_py import (  # noqa: F401  (re-exported: one set of rules for both)
    MAX_LOOP_BATCH,
    check_loop_args,
    check_producer_id,
    check_producers,
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


# produce()/consume() encode the producer and its counter in the cookie
cdef int _PID_SHIFT = 48
cdef uint64_t _COUNTER_MASK = (<uint64_t>1 << 48) - 1
cdef uint32_t _PRODUCED_LENGTH = 4096


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


cdef uint64_t _produce(sp_ring *r, uint64_t n, uint64_t pid, size_t batch, sp_desc *buf,
                       double deadline) noexcept nogil:
    cdef uint64_t k = 0
    cdef size_t m, i, done
    cdef unsigned spins = 0
    cdef sp_desc d
    while k < n:
        if batch == 1:
            _produced(&d, pid, k)
            while sp_ring_push(r, d.op, d.flags, d.offset, d.length, d.cookie) == SP_RING_FULL:
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
            i = sp_ring_push_batch(r, buf + done, m - done)
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


cdef void _consume(sp_ring *r, uint64_t n, uint64_t producers, size_t batch, sp_desc *buf, uint64_t *next_k,
                   uint64_t *counts, _tally *t, double deadline) noexcept nogil:
    cdef size_t got, i, want
    cdef unsigned spins = 0
    cdef uint64_t pid
    while t.count < n:
        want = <size_t>(n - t.count) if n - t.count < batch else batch
        got = sp_ring_pop_batch(r, buf, want)
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
    cdef sp_ring *r
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "produce")
    producer_id = check_producer_id(producer_id)
    c_n, c_pid, c_batch = n, producer_id, batch
    r = (<_Ring>ring).r
    buf = <sp_desc *>malloc(c_batch * sizeof(sp_desc))
    if buf is NULL:
        raise MemoryError("produce: cannot allocate the batch buffer")
    deadline = _now() + timeout
    try:
        with nogil:
            done = _produce(r, c_n, c_pid, c_batch, buf, deadline)
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
    cdef sp_ring *r
    cdef _tally t
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "consume")
    producers = check_producers(producers)
    c_n, c_producers, c_batch = n, producers, batch
    r = (<_Ring>ring).r
    t.count = t.seq_errors = t.order_errors = t.corrupt = t.first_seq = t.last_seq = t.checksum = 0
    buf = <sp_desc *>malloc(c_batch * sizeof(sp_desc))
    next_k = <uint64_t *>calloc(c_producers, sizeof(uint64_t))
    counts = <uint64_t *>calloc(c_producers, sizeof(uint64_t))
    try:
        if buf is NULL or next_k is NULL or counts is NULL:
            raise MemoryError("consume: cannot allocate the batch buffer")
        deadline = _now() + timeout
        with nogil:
            _consume(r, c_n, c_producers, c_batch, buf, next_k, counts, &t, deadline)
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
