"""Blocking calls: the owner thread of a controller and the calls that wait for their completion.

Owns starting and stopping the thread that runs the controller loop (or
declaring another thread its owner), the blocking conveniences any thread may
call (write, read, flush, trim, write_zeroes, trigger: each a ``submit`` that
waits for its completion, polling itself when there is no other owner), the
asyncio form of ``submit``, and ``drain``/``settle``, which finish queued work now.

``BlockingCalls`` is mixed into the Controller: it only submits and polls, so a
request still takes the one path through the ring. It never executes a request
itself.
"""
from __future__ import annotations

import threading
import time

from splitpoint.firmware import errors as E
from splitpoint.firmware.requests import FLAG_FUA, Completion, Op, TriggerResult

_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_FLUSH = int(Op.FLUSH)
_TRIM = int(Op.TRIM)
_ZEROES = int(Op.WRITE_ZEROES)
_TRIGGER = int(Op.TRIGGER)


class BlockingCalls:
    """The owner thread and blocking calls of a Controller (a mixin: see the module docstring)."""

    def submit_future(self, lun, op, offset: int = 0, length: int = 0, data=None, flags: int = 0, label=None,
                      loop=None):
        """Like submit, but returns an asyncio future of the Completion (awaitable on ``loop``)."""
        import asyncio

        loop = loop or asyncio.get_running_loop()
        fut = loop.create_future()

        def resolve(c):
            if not fut.done():
                fut.set_result(c)
        self.submit(lun, op, offset, length, data, flags, label, lambda c: loop.call_soon_threadsafe(resolve, c))
        return fut

    def start(self) -> None:
        """Run the controller loop on a thread of its own (the owner thread)."""
        if self._thread is not None:
            return
        self.wakeup = self._event.set
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="splitpoint-controller", daemon=True)
        self._owner = -1
        self._thread.start()

    def _loop(self) -> None:
        self._owner = threading.get_ident()
        ev = self._event
        while not self._stop:
            n = self.poll()
            if n:
                continue
            delay = self.next_background()
            if delay == 0.0:
                continue
            ev.clear()
            if len(self._ring) or self._stop:
                continue
            ev.wait(delay)

    def stop(self) -> None:
        """Stop the owner thread started by start() (requests already queued stay queued)."""
        t = self._thread
        if t is None:
            return
        self._stop = True
        self._event.set()
        t.join()
        self._thread = None
        self._owner = None
        self.wakeup = None

    def claim_owner(self) -> None:
        """Declare the calling thread the owner (a front end's event loop that calls poll() itself)."""
        self._owner = threading.get_ident()

    def poll_or_wait(self, event: threading.Event | None = None) -> None:
        """Any thread: poll once when there is no owner thread (or this is it); else give the owner a
        moment (until ``event`` is set, at most 50 ms)."""
        owner = self._owner
        if owner is None or owner == threading.get_ident():
            with self._inline_lock:
                self.poll()
        elif event is not None:
            event.wait(0.05)
        else:
            threading.Event().wait(0.0005)

    def _call(self, lun, op, offset=0, length=0, data=None, flags=0, label=None) -> Completion:
        box: list[Completion] = []
        owner = self._owner
        if owner is None or owner == threading.get_ident():
            with self._inline_lock:
                while True:
                    try:
                        self.submit(lun, op, offset, length, data, flags, label, box.append)
                        break
                    except E.QueueFullError:
                        self.poll()
                while not box:
                    self.poll()
        else:
            done = threading.Event()

            def cb(c, box=box, done=done):
                box.append(c)
                done.set()
            while True:
                try:
                    self.submit(lun, op, offset, length, data, flags, label, cb)
                    break
                except E.QueueFullError:
                    time.sleep(0.0005)
            done.wait()
        c = box[0]
        if c.error is not None:
            raise c.error
        return c

    def write(self, lun, offset: int, data, fua: bool = False) -> None:
        self._call(lun, _WRITE, offset, 0, data, FLAG_FUA if fua else 0)

    def read(self, lun, offset: int, length: int) -> bytes:
        return self._call(lun, _READ, offset, length).data

    def flush(self, lun) -> None:
        self._call(lun, _FLUSH)

    def trim(self, lun, offset: int, length: int) -> None:
        self._call(lun, _TRIM, offset, length)

    def write_zeroes(self, lun, offset: int, length: int, flags: int = 0) -> None:
        self._call(lun, _ZEROES, offset, length, None, flags)

    def trigger(self, lun, label=None) -> TriggerResult:
        return self._call(lun, _TRIGGER, label=label).trigger

    def drain(self) -> None:
        """Owner thread (or no owner): complete every queued request and every async mirror op."""
        while len(self._ring):
            self.poll()
        for path in self._async_paths:
            path.drain()

    def settle(self) -> None:
        """Owner thread (or no owner): finish queued requests, mirror queues, resyncs and digests now."""
        with self._inline_lock:
            self.drain()
            while True:
                for node in self._nodes:
                    node.finish_sweep()
                for pool in self._pools:
                    pool.finish()
                if not any(p.has_background() for p in self._pools) and not any(n.sweep for n in self._nodes):
                    break
            for dq in self._queues:
                dq.drain()
            self._bg = False
