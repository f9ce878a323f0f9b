# ring.pxd: C-level API of the sequenced request ring (implemented in sp_ring.h).
#
# Index arithmetic.  head and tail are free-running uint64 positions that only grow;
# a position's slot is `pos & mask` (capacity is a power of two, mask = capacity - 1),
# and the descriptor at position pos carries seq = first_seq + pos.
#
#     capacity 8 (mask 7), first_seq 1, after 11 pushes and 6 pops: tail = 6, head = 11
#
#       position:  0 1 2 3 4 5 | 6 7 8 9 10 | 11 12 13 | 14 ...
#                  popped      | queued     | free     | beyond tail + capacity
#                                ^tail        ^head      ^tail + capacity
#
#       slot (pos & 7):    0    1    2    3    4    5    6    7
#       holds position: [  8    9   10 | 11   12   13 |  6    7 ]
#                        queued          free           queued (oldest)
#
#       seq of position 6 = first_seq + 6 = 7; the next push gets position 11, seq 12
#
#       len      = head - tail            (0 <= len <= capacity; unsigned wrap is harmless)
#       full     : head - tail == capacity
#       empty    : head == tail
#       next_seq = first_seq + head       (the seq the next push is stamped with)
#
# SPSC: the producer alone writes head (release), the consumer alone writes tail (release);
# each caches the other's index and reloads it (acquire) only when its cache says full/empty.
# MPSC: producers reserve [pos, pos + k) with a CAS on head (room = capacity - (head - tail)),
# fill those cells and publish each with turn = pos + 1 (release); the consumer takes cells
# in position order while they are published, then moves tail (release), handing them back.
# A reserved but unpublished cell holds the consumer at its position, so seqs reach the
# consumer consecutive even when producers finish out of order.
#
# Every function below touches only C data and is safe without the GIL.  A ring object's
# C ring is `ring.r`; SPSC rings take one producer and one consumer thread at a time,
# MPSC rings any number of producers and one consumer.

from cpython.object cimport PyObject
from libc.stdint cimport uint16_t, uint32_t, uint64_t


cdef extern from "sp_ring.h" nogil:
    # largest capacity a ring accepts (2^24 descriptors)
    const uint64_t SP_RING_MAX_CAPACITY
    # what push returns when the ring is full (UINT64_MAX, never a seq)
    const uint64_t SP_RING_FULL

    # one 32-byte request descriptor, laid out exactly like ring.DESC_DTYPE
    ctypedef struct sp_desc:
        uint64_t seq      # stamped by the ring at enqueue: first_seq + position
        uint64_t offset   # byte offset
        uint64_t cookie   # producer's handle
        uint32_t length   # byte length
        uint16_t op       # request opcode
        uint16_t flags    # FLAG_FUA | FLAG_FAST_ZERO | FLAG_NO_HOLE

    # single-producer/single-consumer ring (opaque)
    ctypedef struct sp_spsc:
        pass

    # multi-producer/single-consumer ring (opaque)
    ctypedef struct sp_mpsc:
        pass

    # spin-wait hint for the core (pause / yield instruction)
    void sp_cpu_relax()

    # new SPSC ring; NULL when capacity is not a power of two <= SP_RING_MAX_CAPACITY or out of memory
    sp_spsc *sp_spsc_new(uint64_t capacity, uint64_t first_seq)
    # free an SPSC ring (NULL is fine)
    void sp_spsc_free(sp_spsc *r)
    # producer: enqueue one descriptor; its seq, or SP_RING_FULL
    uint64_t sp_spsc_push(sp_spsc *r, uint16_t op, uint16_t flags, uint64_t offset, uint32_t length, uint64_t cookie)
    # producer: enqueue a prefix of descs[0:n], stamping their seq in place; the count enqueued
    size_t sp_spsc_push_batch(sp_spsc *r, sp_desc *descs, size_t n)
    # consumer: dequeue one descriptor into *out; 1, or 0 when empty
    int sp_spsc_pop(sp_spsc *r, sp_desc *out)
    # consumer: dequeue up to n descriptors into out[0:n]; the count dequeued
    size_t sp_spsc_pop_batch(sp_spsc *r, sp_desc *out, size_t n)
    # descriptors in the ring (a snapshot when other threads are active)
    uint64_t sp_spsc_len(sp_spsc *r)
    # seq the next push will be stamped with
    uint64_t sp_spsc_next_seq(sp_spsc *r)
    # number of slots
    uint64_t sp_spsc_capacity(sp_spsc *r)

    # new MPSC ring; NULL when capacity is not a power of two <= SP_RING_MAX_CAPACITY or out of memory
    sp_mpsc *sp_mpsc_new(uint64_t capacity, uint64_t first_seq)
    # free an MPSC ring (NULL is fine)
    void sp_mpsc_free(sp_mpsc *r)
    # any producer: enqueue one descriptor; its seq, or SP_RING_FULL
    uint64_t sp_mpsc_push(sp_mpsc *r, uint16_t op, uint16_t flags, uint64_t offset, uint32_t length, uint64_t cookie)
    # any producer: enqueue a prefix of descs[0:n] at consecutive seqs, stamped in place; the count
    size_t sp_mpsc_push_batch(sp_mpsc *r, sp_desc *descs, size_t n)
    # the consumer: dequeue one descriptor into *out; 1, or 0 when empty (or the next one is still being filled)
    int sp_mpsc_pop(sp_mpsc *r, sp_desc *out)
    # the consumer: dequeue up to n descriptors into out[0:n]; the count dequeued
    size_t sp_mpsc_pop_batch(sp_mpsc *r, sp_desc *out, size_t n)
    # reserved positions not yet dequeued (a snapshot)
    uint64_t sp_mpsc_len(sp_mpsc *r)
    # seq the next reservation will get
    uint64_t sp_mpsc_next_seq(sp_mpsc *r)
    # number of cells
    uint64_t sp_mpsc_capacity(sp_mpsc *r)


# pop()'s cache of the tuples push() built, so a descriptor pushed and popped from Python
# is boxed once: slot i holds an owned (seq, op, flags, offset, length, cookie) tuple or NULL.
# Touched only with the GIL held; nogil pushes and pops ignore it (pop checks the seq).
cdef struct sp_box:
    PyObject *tuple       # owned tuple, or NULL
    uint64_t seq          # the seq it was built for

cdef struct sp_boxes:
    sp_box *slots         # capacity entries, allocated on the first push() from Python
    uint64_t mask         # capacity - 1
    uint64_t first_seq    # seq of position 0


# Python face of an SPSC ring; `r` is its C ring for nogil callers
cdef class SPSCRing:
    cdef sp_spsc *r
    cdef sp_boxes boxes


# Python face of an MPSC ring; `r` is its C ring for nogil callers
cdef class MPSCRing:
    cdef sp_mpsc *r
    cdef sp_boxes boxes
