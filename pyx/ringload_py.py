"""Load loops over the ring, pure-Python twin of ``ringload.pyx``.

Owns produce()/consume(), the producer and consumer loops tests and benchmarks use to move
many descriptors between threads and check every one, and the rules for their arguments
(the compiled module takes them from here). They take the rings of ``ring_py`` only; the
controller never uses this module.

``produce``/``consume`` encode descriptor k of producer p as cookie = p << 48 | k,
offset = k * 4096, length = 4096, op = k & 7, flags = p.
"""
from __future__ import annotations

import operator
import time

import numpy as np

from splitpoint.pyx.ring_py import DESC_DTYPE, MPSCRing, SPSCRing

#: largest batch produce()/consume() take
MAX_LOOP_BATCH = 65536

_U16 = 0xFFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF
_PID_SHIFT = 48
_COUNTER_MASK = (1 << 48) - 1
_PRODUCED_LENGTH = 4096


def check_loop_args(ring, ring_types, n, batch, timeout, what: str) -> tuple[int, int, float]:
    """(n, batch, timeout) of produce()/consume() after validating them; ring must be one of ring_types."""
    n = operator.index(n)
    batch = operator.index(batch)
    if not 0 <= n <= _COUNTER_MASK:
        raise ValueError(f"{what}: n must be in [0, 2**48), got {n}")
    if not 1 <= batch <= MAX_LOOP_BATCH:
        raise ValueError(f"{what}: batch must be in [1, {MAX_LOOP_BATCH}], got {batch}")
    if not isinstance(ring, ring_types):
        raise TypeError(f"{what} takes an SPSCRing or MPSCRing of this module, got {type(ring).__name__}")
    return n, batch, float(timeout)


def check_producer_id(producer_id) -> int:
    producer_id = operator.index(producer_id)
    if not 0 <= producer_id <= _U16:
        raise ValueError(f"produce: producer_id must be in [0, 65535], got {producer_id}")
    return producer_id


def check_producers(producers) -> int:
    producers = operator.index(producers)
    if not 1 <= producers <= 0x10000:
        raise ValueError(f"consume: producers must be in [1, 65536], got {producers}")
    return producers


def _produced(pid: int, k: int) -> tuple[int, int, int, int, int]:
    """Descriptor number k of producer pid as push() arguments (consume() checks every field)."""
    return k & 7, pid, k * 4096, _PRODUCED_LENGTH, (pid << _PID_SHIFT) | k


def _wait(deadline: float) -> bool:
    """Let the other side run; True once past deadline."""
    time.sleep(0)
    return time.monotonic() > deadline


def produce(ring, n, producer_id=0, batch=1, timeout=60.0):
    """Push n descriptors numbered 0..n-1 for producer `producer_id`, `batch` at a time, waiting
    while the ring is full; the count pushed (< n only on timeout).  See the module docstring
    for the descriptor encoding; several threads may produce into an MPSCRing at once.
    """
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "produce")
    pid = check_producer_id(producer_id)
    deadline = time.monotonic() + timeout
    k = 0
    buf = np.zeros(batch, DESC_DTYPE)
    while k < n:
        if batch == 1:
            args = _produced(pid, k)
            while ring.push(*args) < 0:
                if _wait(deadline):
                    return k
            k += 1
            continue
        m = min(batch, n - k)
        ks = np.arange(k, k + m, dtype=np.uint64)
        chunk = buf[:m]
        chunk["seq"] = 0
        chunk["op"] = ks & 7
        chunk["flags"] = pid
        chunk["offset"] = ks * 4096
        chunk["length"] = _PRODUCED_LENGTH
        chunk["cookie"] = (pid << _PID_SHIFT) | ks
        done = 0
        while done < m:
            got = ring.push_batch(chunk[done:])
            if got == 0:
                if _wait(deadline):
                    return k + done
            done += got
        k += m
    return k


def consume(ring, n, producers=1, batch=1, timeout=60.0):
    """Pop n descriptors made by produce(), `batch` at a time, checking each.

    Returns a dict: count (< n only on timeout), seq_errors (a seq that is not the previous + 1),
    order_errors (a producer's descriptors lost, duplicated or out of order, or a producer id
    >= producers), corrupt (fields that disagree with the cookie), per_producer (counts),
    first_seq, last_seq (None when nothing came) and checksum (sum of cookies mod 2**64).
    """
    n, batch, timeout = check_loop_args(ring, (SPSCRing, MPSCRing), n, batch, timeout, "consume")
    producers = check_producers(producers)
    deadline = time.monotonic() + timeout
    next_k = [0] * producers
    counts = [0] * producers
    count = seq_errors = order_errors = corrupt = checksum = 0
    first_seq = last_seq = None
    buf = np.zeros(batch, DESC_DTYPE)
    while count < n:
        if batch == 1:
            item = ring.pop()
            rows = [] if item is None else [item]
        else:
            got = ring.pop_batch(buf[:min(batch, n - count)])
            rows = [(seq, op, flags, offset, length, cookie)
                    for seq, offset, cookie, length, op, flags in buf[:got].tolist()]
        if not rows:
            if _wait(deadline):
                break
            continue
        for seq, op, flags, offset, length, cookie in rows:
            pid, k = cookie >> _PID_SHIFT, cookie & _COUNTER_MASK
            if count == 0:
                first_seq = seq
            elif seq != last_seq + 1:
                seq_errors += 1
            last_seq = seq
            count += 1
            checksum = (checksum + cookie) & _U64
            if pid >= producers or k != next_k[pid]:
                order_errors += 1
            if pid < producers:
                next_k[pid] = k + 1
                counts[pid] += 1
            if op != k & 7 or flags != pid & _U16 or offset != (k * 4096) & _U64 or length != _PRODUCED_LENGTH:
                corrupt += 1
    return {
        "count": count,
        "seq_errors": seq_errors,
        "order_errors": order_errors,
        "corrupt": corrupt,
        "per_producer": counts,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "checksum": checksum,
    }
