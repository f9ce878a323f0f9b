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
# One ring body serves both producer disciplines (chosen when the ring is made):
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

    # the ring body, either discipline (opaque)
    ctypedef struct sp_ring:
        pass

    # spin-wait hint for the core (pause / yield instruction)
    void sp_cpu_relax()

    # new ring (multi: 1 for MPSC, 0 for SPSC); NULL when capacity is not a power of two
    # <= SP_RING_MAX_CAPACITY or out of memory
    sp_ring *sp_ring_new(uint64_t capacity, uint64_t first_seq, int multi)
    # free a ring (NULL is fine)
    void sp_ring_free(sp_ring *r)
    # a producer (SPSC: the producer): enqueue one descriptor; its seq, or SP_RING_FULL
    uint64_t sp_ring_push(sp_ring *r, uint16_t op, uint16_t flags, uint64_t offset, uint32_t length, uint64_t cookie)
    # a producer: enqueue a prefix of descs[0:n] at consecutive seqs, stamped in place; the count
    size_t sp_ring_push_batch(sp_ring *r, sp_desc *descs, size_t n)
    # the consumer: dequeue one descriptor into *out; 1, or 0 when empty (or the next one is still being filled)
    int sp_ring_pop(sp_ring *r, sp_desc *out)
    # the consumer: dequeue up to n descriptors into out[0:n]; the count dequeued
    size_t sp_ring_pop_batch(sp_ring *r, sp_desc *out, size_t n)
    # descriptors in the ring, MPSC: reserved positions not yet dequeued (a snapshot)
    uint64_t sp_ring_len(sp_ring *r)
    # seq the next push (reservation) will get
    uint64_t sp_ring_next_seq(sp_ring *r)
    # number of slots
    uint64_t sp_ring_capacity(sp_ring *r)


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


# the Python face both rings share; `r` is its C ring for nogil callers (see ringload.pyx)
cdef class _Ring:
    cdef sp_ring *r
    cdef sp_boxes boxes


# one producer thread and one consumer thread at a time
cdef class SPSCRing(_Ring):
    pass


# any number of producer threads, one consumer thread
cdef class MPSCRing(_Ring):
    pass
