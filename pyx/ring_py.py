"""The sequenced request queue, pure-Python twin of ``ring.pyx``.

Owns the ring semantics every implementation shares: descriptors stamped with
consecutive sequence numbers from ``first_seq`` in enqueue order, a power-of-two
capacity, full and empty reported by return value (-1, None, a short count) and
never by raising, batches that move a prefix.  It never blocks on the hot path.

Rules both implementations share (the tests hold them to it):
- ``capacity`` is a power of two in [1, MAX_CAPACITY] (else ValueError);
  ``0 <= first_seq < 2**63`` (seqs are returned as non-negative ints, -1 means full).
- ``push`` fields are integers that fit their C types (op, flags u16; offset,
  cookie u64; length u32): TypeError for non-integers, OverflowError when out of range.
- Batches take a writable, contiguous 1-D numpy array of DESC_DTYPE (or a
  buffer, such as a memoryview, that numpy reads as one): TypeError for the wrong
  type or dtype, ValueError for the wrong shape, a read-only or a strided array.

One ring body (``_Ring``) serves both rings, as in the compiled module; the producer
discipline is the only difference: this twin's MPSCRing serialises producers with a
lock.  The compiled module takes DESC_DTYPE, the limits and the validators from here,
so both accept and reject the same things.  It is the fallback, not the hot path; the
load loops tests and benchmarks use are ``ringload_py``'s.
"""
from __future__ import annotations

import operator
import threading

import numpy as np

#: numpy dtype of one descriptor: the layout of the C struct sp_desc (32 bytes)
DESC_DTYPE = np.dtype({
    "names": ["seq", "offset", "cookie", "length", "op", "flags"],
    "formats": ["<u8", "<u8", "<u8", "<u4", "<u2", "<u2"],
    "offsets": [0, 8, 16, 24, 28, 30],
    "itemsize": 32,
})
#: largest capacity a ring accepts (2**24 descriptors, 512 MiB of slots)
MAX_CAPACITY = 1 << 24

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def check_geometry(capacity, first_seq) -> tuple[int, int]:
    """(capacity, first_seq) after validating both."""
    capacity = operator.index(capacity)
    first_seq = operator.index(first_seq)
    if capacity < 1 or capacity & (capacity - 1):
        raise ValueError(f"ring capacity must be a power of two (1, 2, 4, ... {MAX_CAPACITY}), got {capacity}")
    if capacity > MAX_CAPACITY:
        raise ValueError(f"ring capacity {capacity} is larger than the maximum {MAX_CAPACITY}")
    if not 0 <= first_seq < 2 ** 63:
        raise ValueError(f"first_seq must be in [0, 2**63), got {first_seq}")
    return capacity, first_seq


def check_fields(op, flags, offset, length, cookie) -> tuple[int, int, int, int, int]:
    """The five push fields as ints that fit their C types, in push's argument order."""
    out = []
    for name, value, limit, ctype in (("op", op, _U16, "u16"), ("flags", flags, _U16, "u16"),
                                      ("offset", offset, _U64, "u64"), ("length", length, _U32, "u32"),
                                      ("cookie", cookie, _U64, "u64")):
        value = operator.index(value)
        if not 0 <= value <= limit:
            raise OverflowError(f"descriptor {name} {value} does not fit in {ctype}")
        out.append(value)
    return tuple(out)


def desc_array(descs, what: str) -> np.ndarray:
    """`descs` as a writable, contiguous 1-D ndarray of DESC_DTYPE sharing its memory, or a specific error."""
    if not isinstance(descs, np.ndarray):
        try:
            descs = np.asarray(memoryview(descs))
        except TypeError:
            raise TypeError(f"{what} takes a numpy array of ring.DESC_DTYPE, got {type(descs).__name__}") from None
    if descs.dtype != DESC_DTYPE:
        raise TypeError(f"{what} takes a numpy array of ring.DESC_DTYPE, got dtype {descs.dtype}")
    if descs.ndim != 1:
        raise ValueError(f"{what} takes a 1-D array of descriptors, got {descs.ndim}-D")
    if not descs.flags.writeable:
        raise ValueError(f"{what} needs a writable array (the ring writes seq or descriptors into it)")
    if not descs.flags.c_contiguous:
        raise ValueError(f"{what} needs a contiguous array (numpy.ascontiguousarray makes one)")
    return descs


class _Ring:
    """The ring body both rings share: slots, positions, the consumer side and the single-producer push."""

    __slots__ = ("_slots", "_mask", "_first", "_head", "_tail")

    def __init__(self, capacity, first_seq=1):
        capacity, first_seq = check_geometry(capacity, first_seq)
        # slot tuples are kept in pop()'s order: (seq, op, flags, offset, length, cookie)
        self._slots: list = [None] * capacity
        self._mask = capacity - 1
        self._first = first_seq
        self._head = 0      # next position to fill; written only by the producer
        self._tail = 0      # next position to take; written only by the consumer

    def push(self, op, flags, offset, length, cookie):
        """Enqueue one descriptor; its seq, or -1 when the ring is full."""
        if not (type(op) is int and type(flags) is int and type(offset) is int and type(length) is int
                and type(cookie) is int and 0 <= op <= _U16 and 0 <= flags <= _U16 and 0 <= offset <= _U64
                and 0 <= length <= _U32 and 0 <= cookie <= _U64):
            op, flags, offset, length, cookie = check_fields(op, flags, offset, length, cookie)
        pos = self._head
        if pos - self._tail > self._mask:
            return -1
        seq = self._first + pos
        self._slots[pos & self._mask] = (seq, op, flags, offset, length, cookie)
        self._head = pos + 1     # publish after the slot is written
        return seq

    def pop(self):
        """(seq, op, flags, offset, length, cookie) of the oldest descriptor, or None when empty."""
        pos = self._tail
        if pos == self._head:
            return None
        slot = pos & self._mask
        item = self._slots[slot]
        self._slots[slot] = None
        self._tail = pos + 1
        return item

    def push_batch(self, descs):
        """Enqueue a prefix of the DESC_DTYPE array `descs` (as many as fit), stamping seq in place; the count."""
        arr = desc_array(descs, "push_batch")
        pos = self._head
        k = min(len(arr), self._mask + 1 - (pos - self._tail))
        if k <= 0:
            return 0
        first = self._first + pos
        arr["seq"][:k] = np.arange(first, first + k, dtype=np.uint64)
        slots, mask = self._slots, self._mask
        for i, (seq, offset, cookie, length, op, flags) in enumerate(arr[:k].tolist()):
            slots[(pos + i) & mask] = (seq, op, flags, offset, length, cookie)
        self._head = pos + k
        return k

    def pop_batch(self, out):
        """Dequeue into a prefix of the DESC_DTYPE array `out`; the count."""
        arr = desc_array(out, "pop_batch")
        pos = self._tail
        k = min(len(arr), self._head - pos)
        if k <= 0:
            return 0
        slots, mask = self._slots, self._mask
        rows = []
        for i in range(k):
            seq, op, flags, offset, length, cookie = slots[(pos + i) & mask]
            slots[(pos + i) & mask] = None
            rows.append((seq, offset, cookie, length, op, flags))
        arr[:k] = np.array(rows, dtype=DESC_DTYPE)
        self._tail = pos + k
        return k

    def __len__(self):
        return self._head - self._tail

    @property
    def capacity(self):
        """Number of slots (a power of two)."""
        return self._mask + 1

    @property
    def next_seq(self):
        """The seq the next push (for MPSC: the next reservation) will be stamped with."""
        return self._first + self._head

    def __repr__(self):
        return f"{type(self).__name__}(capacity={self.capacity}, len={len(self)}, next_seq={self.next_seq})"


class SPSCRing(_Ring):
    """Single-producer/single-consumer ring of descriptors (one producer thread, one consumer thread)."""

    __slots__ = ()


class MPSCRing(_Ring):
    """Multi-producer/single-consumer ring of descriptors (any producer threads, one consumer thread).

    Producers take a lock to reserve and fill their positions; the consumer takes none:
    a slot is written before head moves past it.
    """

    __slots__ = ("_lock",)

    def __init__(self, capacity, first_seq=1):
        super().__init__(capacity, first_seq)
        self._lock = threading.Lock()

    def push(self, op, flags, offset, length, cookie):
        """Enqueue one descriptor; its seq, or -1 when the ring is full."""
        with self._lock:
            return _Ring.push(self, op, flags, offset, length, cookie)

    def push_batch(self, descs):
        """Enqueue a prefix of the DESC_DTYPE array `descs` at consecutive seqs, stamped in place; the count."""
        with self._lock:
            return _Ring.push_batch(self, descs)

