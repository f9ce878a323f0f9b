"""Incremental resync: bring a backup LUN back to its source, chunk by chunk.

Owns the sweep (which chunks still have to be copied, and copying a slice of
them), the throttle (rate limit, deadline paced against foreground load) and
handing each slice to the destination's contract (``copy_from``: the kernel
copies file to file, anything else goes through ``write()``). It never decides
*when* a member is recycled or frozen: the pool does.

A sweep is a cursor over the chunk index. Chunks behind the cursor are done;
a chunk at or after it is pending when its epoch in the source's epoch map is
``>= since`` (and, once the member has been cut at a TRIGGER, ``<= until``,
the epoch the cut closed). ``since`` 0 means everything. Foreground writes
re-mark chunks with the current epoch, so a chunk written while the sweep runs
is copied again when the cursor reaches it: harmless, because the source
already holds that write. Nothing is ever copied from the source while the
source is ahead of the member in the stream (the pool drains its mirror queue
first).
"""
from __future__ import annotations

import time

def copy_between(src_dev, dst_dev, extents) -> int:
    """Copy byte extents from ``src_dev`` to ``dst_dev`` (same offsets); return the bytes copied.

    The destination's contract moves them (``copy_from``): file to file in the kernel, anything
    else read zero-copy from a source ``buffer()`` where there is one and written through ``write()``."""
    if not extents:
        return 0
    return dst_dev.copy_from(src_dev, extents)


def subtract(extents, holes):
    """``extents`` minus ``holes`` (both sorted, non-overlapping byte extents)."""
    if not holes:
        return list(extents)
    out = []
    j = 0
    for offset, length in extents:
        start, end = offset, offset + length
        while j < len(holes) and holes[j][0] + holes[j][1] <= start:
            j += 1
        k = j
        while start < end and k < len(holes) and holes[k][0] < end:
            h0, h1 = holes[k][0], holes[k][0] + holes[k][1]
            if h0 > start:
                out.append((start, h0 - start))
            start = max(start, h1)
            k += 1
        if start < end:
            out.append((start, end - start))
    return out


def clip(extents, budget: int, chunk_size: int):
    """A prefix of ``extents`` holding at most ``budget`` bytes, split on a chunk boundary
    (at least one chunk when the first extent is bigger than the budget)."""
    out = []
    used = 0
    for offset, length in extents:
        if used + length <= budget:
            out.append((offset, length))
            used += length
            continue
        take = (budget - used) // chunk_size * chunk_size
        if take <= 0 and not out:
            take = min(length, chunk_size)
        if take > 0:
            out.append((offset, take))
        break
    return out


class Sweep:
    """One pass of a resync: source node's epoch map decides what is pending."""

    __slots__ = ("epochs", "since", "until", "cursor", "nchunks", "chunk_size", "copied",
                 "total", "started", "deadline", "_rate_t", "_rate_b", "rate")

    def __init__(self, epochs, since: int, deadline: float = 0.0, cursor: int = 0, until: int | None = None):
        self.epochs = epochs
        self.since = since          # chunks with epoch >= since are pending (0: all)
        self.until = until          # once cut: only chunks with epoch <= until (later ones were copied on write)
        self.cursor = cursor        # chunks below it are done
        self.nchunks = len(epochs)
        self.chunk_size = epochs.chunk_size
        self.copied = 0             # bytes copied so far
        self.total = None           # bytes pending when the sweep started (counted lazily, off the TRIGGER path)
        self.started = time.monotonic()
        self.deadline = deadline    # seconds the whole sweep should take (0: none)
        self.rate = 0.0             # bytes per second, smoothed
        self._rate_t = self.started
        self._rate_b = 0

    @property
    def done(self) -> bool:
        return self.cursor >= self.nchunks

    def pending(self, start: int, limit: int):
        """Byte extents still pending among chunks [start, limit) (start clipped to the cursor)."""
        start = max(start, self.cursor)
        if start >= limit:
            return []
        ext = self.epochs.extents_since(self.since, start, limit)
        if ext and self.until is not None:
            ext = subtract(ext, self.epochs.extents_since(self.until + 1, start, limit))
        return ext

    def count_total(self) -> None:
        if self.total is None:
            n = self.epochs.count_since(self.since)
            self.total = min(n * self.chunk_size, self.epochs.size)

    def plan(self, budget: int, scan_chunks: int = 1 << 16):
        """(extents to copy next, cursor after copying them): at most ``budget`` bytes."""
        self.count_total()
        limit = min(self.nchunks, self.cursor + scan_chunks)
        ext = self.pending(self.cursor, limit)
        todo = clip(ext, budget, self.chunk_size)
        if todo and (len(todo) < len(ext) or todo[-1] != ext[len(todo) - 1]):
            last_off, last_len = todo[-1]
            return todo, (last_off + last_len + self.chunk_size - 1) // self.chunk_size
        return todo, limit

    def advance(self, cursor: int, copied: int) -> None:
        self.cursor = cursor
        self._account(copied)

    def step(self, src_dev, dst_dev, budget: int, scan_chunks: int = 1 << 16) -> int:
        """Copy at most ``budget`` bytes of the next pending chunks; return the bytes copied.

        A destination behind a slow link (a DeviceQueue) caps the slice at what it moves in a
        bounded time at its measured rate; while its queue is that full, nothing is copied."""
        cap = getattr(dst_dev, "write_budget", None)
        if cap is not None:
            room = cap()
            if room <= 0:
                return 0
            budget = min(budget, max(room, self.chunk_size))
        todo, cursor = self.plan(budget, scan_chunks)
        n = copy_between(src_dev, dst_dev, todo) if todo else 0
        self.advance(cursor, n)
        return n

    def _account(self, n: int) -> None:
        self.copied += n
        now = time.monotonic()
        dt = now - self._rate_t
        self._rate_b += n
        if dt >= 0.05:
            inst = self._rate_b / dt
            self.rate = inst if self.rate == 0 else 0.7 * self.rate + 0.3 * inst
            self._rate_t, self._rate_b = now, 0

    def remaining(self) -> int:
        if self.done:
            return 0
        total = self.total if self.total is not None else self.epochs.size
        return max(total - self.copied, 0)

    def pending_chunks(self) -> int:
        """Chunks this sweep still has to copy."""
        cs = self.chunk_size
        return sum(-(-ln // cs) for _off, ln in self.pending(self.cursor, self.nchunks))

    def save_state(self) -> dict:
        """Where it stands, as the metadata store keeps it (the epoch map it reads is the source's)."""
        return {"since": self.since, "until": self.until, "cursor": self.cursor}

    def progress(self) -> dict:
        """Percent, rate and ETA for status displays."""
        remaining = self.remaining()
        total = self.total if self.total is not None else 0
        if self.done:
            percent = 100.0
        elif total:
            percent = min(99.9, 100.0 * self.copied / max(total, 1))
        else:
            percent = 100.0 * self.cursor / max(self.nchunks, 1)
        elapsed = time.monotonic() - self.started
        rate = self.rate or (self.copied / elapsed if elapsed > 0 else 0.0)
        eta = remaining / rate if rate > 0 else None
        return {"percent": round(percent, 1), "copied": self.copied, "total": total,
                "rate": round(rate), "eta": None if eta is None else round(eta, 3),
                "cursor": self.cursor, "chunks": self.nchunks}


class Throttle:
    """How many bytes a resync may copy in one background step.

    Idle (no foreground request in this poll): a full slice, limited only by
    the rate. Busy: one chunk per step so a foreground request never waits
    behind a long copy, unless the deadline needs more, in which case the
    step copies what keeps the sweep on schedule.
    """

    def __init__(self, rate: int = 0, deadline: float = 0.0, slice_bytes: int = 4 << 20, chunk_size: int = 65536):
        self.rate = rate
        self.deadline = deadline
        self.slice = max(slice_bytes, chunk_size)
        self.chunk_size = chunk_size
        # a rate-limited resync never bursts: one chunk at a time, evenly spaced, so foreground
        # requests never meet a run of copies
        self._cap = float(chunk_size) if rate else float(self.slice)
        self._tokens = self._cap
        self._last = time.monotonic()

    def budget(self, sweep: Sweep | None, busy: bool, now: float | None = None) -> int:
        """Bytes the next step may move (0: none now). ``sweep`` None: digest work, no deadline."""
        now = time.monotonic() if now is None else now
        dt = max(now - self._last, 0.0)
        self._last = now
        want = self.chunk_size if busy else self.slice
        deadline = 0.0 if sweep is None else (sweep.deadline or self.deadline)
        if busy and deadline:
            left = sweep.started + deadline - now
            if left <= 0:
                want = self.slice
            else:
                need = int(sweep.remaining() * min(1.0, max(dt, 1e-4) / left))
                want = max(want, min(self.slice, need))
        if self.rate:
            self._tokens = min(self._cap, self._tokens + self.rate * dt)
            if self._tokens < self.chunk_size:
                return 0
            want = min(want, int(self._tokens))
        return want

    def spend(self, n: int) -> None:
        if self.rate:
            self._tokens -= n

    def delay(self) -> float:
        """Seconds until the rate limit allows another chunk (0 when it does now)."""
        if not self.rate:
            return 0.0
        short = self.chunk_size - self._tokens - self.rate * (time.monotonic() - self._last)
        return max(short / self.rate, 0.0)
