"""Device queues: a pool member on a slow device (a board behind a serial link) without blocking the loop.

Owns ``DeviceQueue``, which stands in front of one member's device: writes,
trims, write-zeroes and flushes are queued in stream order and run by one
worker thread, so the controller loop hands them over and goes on; reads
queue behind the writes before them (they see every earlier write) and either
complete through a callback (an NBD read of a backup) or are read ahead: a
digest reads a member front to back, so the queue fetches the next slice while
the loop hashes this one, and ``read_budget`` offers only what has arrived. It keeps a per-device rate estimate
(bytes/s the device actually moved), and the controller sizes background
slices by it (``write_budget``), so no slice ever queues more than a bounded
time of work. A device error fails the op and every op queued after it (they
are out of order now) and is reported once to the loop, which demotes the
member; the queue works again for the next activation.

It never reorders ops, never decides what a failure means for the pool, and
is never put in front of a primary LUN (its acknowledgements must mean the
data is on the device).
"""
from __future__ import annotations

import collections
import logging
import threading
import time

from splitpoint.hal import HalError
from splitpoint.hal.contract import copy_by_steps

log = logging.getLogger("splitpoint.devio")

#: seconds of device work a background slice may queue (so a slice takes a bounded time)
SLICE_TIME = 0.25
#: seconds of device work one read-ahead fetches
READ_TIME = 0.1
#: seconds of queued mirror writes after which the device is reported as unable to keep up
BACKLOG_TIME = 8.0
#: ... but never fewer bytes than this (a short burst on an idle board is normal)
BACKLOG_MIN = 16 << 20
#: bytes/s assumed before the first measurement
START_RATE = 100_000

_WRITE, _TRIM, _ZEROES, _FLUSH, _READ, _TRIGGER = range(6)


class DeviceBackloggedError(HalError):
    """The device takes writes far slower than they arrive: its member cannot stay in sync."""


class DeviceQueue:
    """One device's ops in stream order, executed by a worker thread.

    ::

        loop thread ── write/trim/flush ──> [op op op read op] ──> worker ──> device (blocking HAL)
                     <── failed() once ──── error, or callback(data) of an async read
    """

    def __init__(self, device, name: str, wakeup=None, rate_hint: int | None = None):
        self.device = device
        self.name = name
        self.size = device.size
        self.block_size = device.block_size
        self.read_only = getattr(device, "read_only", False)
        self.scheme = device.scheme
        self.persistent = device.persistent
        self.wakeup = wakeup                # called (any thread) when an async read completed or an op failed
        self.rate = float(rate_hint or START_RATE)   # bytes/s the device moved, smoothed
        self.measured = False
        self.queued_bytes = 0               # data bytes waiting or running
        self.stats = collections.Counter()
        self.missed_triggers: list[dict] = []   # TRIGGERs (a device that cuts itself) that failed or were dropped
        self._q: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._busy = False
        self._error: HalError | None = None      # a failure not yet reported to the loop
        self._failing: HalError | None = None    # ops queued before the report fail with it too
        self._closed = False
        self._ahead: list | None = None          # [offset, length, data, error, done]: the read-ahead slice
        self._worker = threading.Thread(target=self._run, name=f"devio {name}", daemon=True)
        self._worker.start()

    def __getattr__(self, name):
        # everything else (describe, link_status, info, stats of the backend...) is the device's
        device = self.__dict__.get("device")
        if device is None:
            raise AttributeError(name)
        return getattr(device, name)

    # -- what the loop calls ------------------------------------------------------------------------
    def buffer(self):
        return None   # never a direct view: every byte goes through the queue, in order

    def write(self, offset: int, data, fua: bool = False) -> None:
        self._put(_WRITE, offset, len(data), bytes(data), fua)

    def copy_from(self, src, extents) -> int:
        # through the queue, in order with the writes already queued (never the backend's own copy)
        return copy_by_steps(src, self, extents)

    def trim(self, offset: int, length: int) -> None:
        self._put(_TRIM, offset, length, None, False)

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        self._put(_ZEROES, offset, length, None, fua)

    def flush(self) -> None:
        """Queued behind every earlier write (``drain`` waits for it)."""
        self._put(_FLUSH, 0, 0, None, False)

    def trigger(self, trigger_id: int, label: str = "", missed: bool = False) -> None:
        """A device that cuts itself: its TRIGGER, queued behind every earlier write (never ahead of one)."""
        self._put(_TRIGGER, trigger_id, 0, (label, missed), False)

    def flush_and_wait(self) -> None:
        """Flush behind every queued op and wait until the device did it: what was queued is durable.

        A TRIGGER's cut on this device counts as a backup only after this returned (the device takes
        no in-band TRIGGER, so the cut is a drain barrier). Raises the failure of any op up to the
        flush, or DeviceBackloggedError when the queue did not drain within the time it should take."""
        self.flush()
        limit = self.queued_bytes / max(self.rate, 1.0) + 10.0
        if not self.drain(timeout=limit):
            raise DeviceBackloggedError(f"{self.name}: queued writes did not reach the device within {limit:.1f} s")
        err = self.failed()
        if err is not None:
            raise err

    def read(self, offset: int, length: int) -> bytes:
        """Read behind every queued op: at once when the read-ahead holds exactly it, else blocking.
        Either way the next slice of the same size is fetched ahead."""
        ahead = self._ahead
        if ahead is not None and ahead[4] and ahead[0] == offset and ahead[1] == length:
            self._ahead = None
            self._read_ahead(offset + length, length)
            if ahead[3] is not None:
                raise ahead[3]
            return ahead[2]
        data = self._read_now(offset, length)
        self._read_ahead(offset + length, length)
        return data

    def _read_ahead(self, offset: int, length: int) -> None:
        length = min(length, self.size - offset)
        if length <= 0:
            return
        slot = [offset, length, None, None, False]
        self._ahead = slot

        def done(data, error, slot=slot):
            slot[2], slot[3], slot[4] = data, error, True
        self.read_async(offset, length, done)

    def _read_now(self, offset: int, length: int) -> bytes:
        box: list = []
        done = threading.Event()

        def cb(data, error):
            box.append((data, error))
            done.set()
        self.read_async(offset, length, cb)
        done.wait()
        data, error = box[0]
        if error is not None:
            raise error
        return data

    def read_async(self, offset: int, length: int, callback) -> None:
        """Queue a read; ``callback(data, error)`` runs on the worker thread once it ran."""
        with self._cv:
            if self._closed:
                raise HalError(f"{self.name}: device queue is closed")
            self._q.append((_READ, offset, length, callback, False, time.monotonic()))
            self._cv.notify()

    def write_budget(self, seconds: float = SLICE_TIME) -> int:
        """Bytes a background slice may queue now: what the device moves in ``seconds``, while at most
        one more such slice is queued ahead of it (so the device never idles between two slices)."""
        one = int(self.rate * seconds)
        return max(min(one, 2 * one - self.queued_bytes), 0)

    def read_budget(self, seconds: float = READ_TIME) -> int:
        """Bytes a read may ask for without waiting: the read-ahead slice once it has arrived, 0 while it
        (or a write before it) is on its way; with no read-ahead, what a bounded blocking read moves."""
        ahead = self._ahead
        if ahead is not None:
            return ahead[1] if ahead[4] else 0
        with self._cv:
            if self._q or self._busy:
                return 0
        # a power of two: it divides a digest region, so every read of a region has the read-ahead's size
        want = max(int(self.rate * seconds), self.block_size)
        return 1 << (want.bit_length() - 1)

    def backlog_limit(self) -> int:
        return max(int(self.rate * BACKLOG_TIME), BACKLOG_MIN)

    def failed(self) -> HalError | None:
        """The failure of an op since the last call, reported once (the loop demotes the member)."""
        with self._cv:
            err, self._error = self._error, None
            if err is not None:
                self._failing = None
            return err

    def idle(self) -> bool:
        with self._cv:
            return not self._q and not self._busy

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued op ran; False when ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._q or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left if left is not None else 0.1)
        return True

    def status(self) -> dict:
        with self._cv:
            depth = len(self._q) + (1 if self._busy else 0)
            lag = time.monotonic() - self._q[0][5] if self._q else 0.0   # how old the oldest waiting op is
        return {"queued_ops": depth, "queued_bytes": self.queued_bytes, "lag_seconds": round(lag, 3),
                "rate": round(self.rate), "missed_triggers": list(self.missed_triggers),
                "measured": self.measured, **{k: v for k, v in self.stats.items()}}

    def close(self) -> None:
        if self._closed:
            return
        self.drain(timeout=self.queued_bytes / max(self.rate, 1.0) + 10.0)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._worker.join(timeout=5)
        self.device.close()

    def describe(self) -> str:
        return self.device.describe()

    # -- internals ------------------------------------------------------------------------------------
    def _put(self, op, offset, length, data, fua) -> None:
        with self._cv:
            if self._closed:
                raise HalError(f"{self.name}: device queue is closed")
            err = self._error
            if err is not None:
                self._error = None
                self._failing = None
                raise err           # the loop hears of the failure on its next op: the member is demoted
            if op != _FLUSH and op != _READ and self.queued_bytes > self.backlog_limit():
                self.stats["backlogged"] += 1
                raise DeviceBackloggedError(
                    f"{self.name}: {self.queued_bytes} bytes of mirror writes wait for a device that moves "
                    f"{self.rate:.0f} bytes/s ({self.describe()})")
            if op == _WRITE:
                self.queued_bytes += length
            if op != _FLUSH:
                self._ahead = None   # the read-ahead ran before this write: it may be stale now
            self._q.append((op, offset, length, data, fua, time.monotonic()))
            self._cv.notify()

    def _run(self) -> None:
        dev = self.device
        while True:
            with self._cv:
                while not self._q and not self._closed:
                    self._cv.wait()
                if not self._q:
                    return
                op, offset, length, data, fua, _queued_at = self._q.popleft()
                self._busy = True
                failing = self._failing
            error = failing
            result = None
            t0 = time.monotonic()
            if error is None:
                try:
                    if op == _WRITE:
                        dev.write(offset, data, fua)
                    elif op == _READ:
                        result = dev.read(offset, length)
                    elif op == _TRIM:
                        dev.trim(offset, length)
                    elif op == _ZEROES:
                        dev.write_zeroes(offset, length, fua)
                    elif op == _TRIGGER:
                        dev.trigger(offset, data[0], missed=data[1])
                    else:
                        dev.flush()
                except HalError as exc:
                    error = exc
                except Exception as exc:   # a backend bug must not kill the worker and strand the queue
                    error = HalError(f"{self.name}: {type(exc).__name__}: {exc}")
            moved = length if op in (_WRITE, _READ) else 0
            if error is None and moved:
                self._measure(moved, time.monotonic() - t0)
            report = False
            with self._cv:
                self._busy = False
                if op == _WRITE:
                    self.queued_bytes -= length
                if error is not None and failing is None:
                    log.warning("%s: device error, the ops queued after it are dropped: %s", self.name, error)
                    self.stats["errors"] += 1
                    self._error = self._failing = error
                    report = True
                self._cv.notify_all()
            if op == _TRIGGER and error is not None:   # the device never cut there: say so in status
                self.missed_triggers.append({"id": offset, "label": data[0], "why": str(error)})
                del self.missed_triggers[:-64]
            if op == _READ:
                try:
                    data(result, error)
                except Exception:   # the loop's callback must not stop the worker
                    self.stats["callback_errors"] += 1
            if report and self.wakeup is not None:
                self.wakeup()

    def _measure(self, n: int, dt: float) -> None:
        if dt <= 0:
            return
        inst = n / dt
        self.rate = inst if not self.measured else 0.8 * self.rate + 0.2 * inst
        self.measured = True
