"""The mirror path: one hop from a LUN to its backup side, in stream order.

Owns forwarding data ops, FLUSHes and TRIGGERs from a source LUN node to a
target (a primary backup LUN node, or a backup pool) strictly in order.
Synchronous: the target applies each op before the host request completes.
Asynchronous: ops are copied into a bounded in-order queue that the
controller drains in its background step; when the queue is full the next
forward applies queued ops first (backpressure, never unbounded memory).
It never reorders, merges or drops an op, and never decides what a TRIGGER
does on the backup side: the target does.
"""
from __future__ import annotations

from collections import deque

from splitpoint.firmware.requests import Op
from splitpoint.hal import HalError

_WRITE = int(Op.WRITE)
_FLUSH = int(Op.FLUSH)
_TRIGGER = int(Op.TRIGGER)


class MirrorPath:
    """One hop source -> target; ``mode`` is "sync" or "async"."""

    def __init__(self, source, target, mode: str = "sync", max_ops: int = 4096, max_bytes: int = 64 << 20):
        if mode not in ("sync", "async"):
            raise ValueError(f"mirror mode must be sync or async, got {mode!r}")
        self.source = source
        self.target = target
        self.mode = mode
        self.sync = mode == "sync"
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self.queue: deque = deque()
        self.queued_bytes = 0
        self.queued_triggers = 0
        self.forwarded = 0       # data ops that went through forward() (sync hops to a pool bypass it)
        self.stalls = 0          # forwards that had to apply queued ops first (backpressure)
        self.errors = 0          # target I/O failures
        target.attach_upstream(self)
        # a LUN node target watches its device's session (a pool checks its members itself)
        self._watch_medium = hasattr(target, "check_medium") and hasattr(target.device, "incarnation")

    @property
    def name(self) -> str:
        return f"{self.source.name}->{self.target.name}"

    def __len__(self) -> int:
        return len(self.queue)

    def direct(self):
        """What the source calls per data op: the target's own apply on a synchronous hop to a
        pool (which handles its members' errors itself), else this path's forward."""
        if self.sync and getattr(self.target, "absorbs_errors", False):
            return self.target.apply
        return self.forward

    def forward(self, op: int, offset: int, length: int, data, flags: int, epoch: int) -> None:
        """Send one data op (WRITE, TRIM, WRITE_ZEROES) down the path, in order."""
        self.forwarded += 1
        if self.sync:
            self._apply(op, offset, length, data, flags, epoch)
            return
        if op == _WRITE and type(data) is not bytes:
            data = bytes(data)  # the host may reuse its buffer once acknowledged
        queue = self.queue
        queue.append((op, offset, length, data, flags, epoch))
        if op == _WRITE:
            self.queued_bytes += length
        if len(queue) > self.max_ops or self.queued_bytes > self.max_bytes:
            self.stalls += 1
            while queue and (len(queue) > self.max_ops // 2 or self.queued_bytes > self.max_bytes // 2):
                self._pop()

    def flush(self) -> None:
        """Forward a FLUSH in order (the target makes everything before it durable)."""
        if self.sync:
            self._flush()
        else:
            self.queue.append((_FLUSH, 0, 0, None, 0, 0))

    def trigger(self, event) -> None:
        """Forward a TRIGGER behind every earlier op on this path."""
        if self.sync:
            self.target.trigger(event)
            return
        self.queue.append((_TRIGGER, 0, 0, event, 0, 0))
        self.queued_triggers += 1
        if self.queued_triggers > 1 or self.target.needs_prompt_trigger():
            # the backup side must be cut at exactly this point before the source moves on
            # (copy-on-write of chunks it still needs starts there), so deliver it now; an
            # earlier TRIGGER still queued will leave a member resyncing for this one to cut
            self.drain()

    def drain(self, max_ops: int | None = None) -> int:
        """Apply queued ops in order (all, or at most ``max_ops``); return how many."""
        queue = self.queue
        n = 0
        while queue and (max_ops is None or n < max_ops):
            self._pop()
            n += 1
        return n

    def _pop(self) -> None:
        op, offset, length, data, flags, epoch = self.queue.popleft()
        if op == _TRIGGER:
            self.queued_triggers -= 1
            self.target.trigger(data)
        elif op == _FLUSH:
            self._flush()
        else:
            if op == _WRITE:
                self.queued_bytes -= length
            self._apply(op, offset, length, data, flags, epoch)

    def _apply(self, op, offset, length, data, flags, epoch) -> None:
        target = self.target
        try:
            target.apply(op, offset, length, data, flags, epoch)
        except HalError as exc:
            self.errors += 1
            target.device_failed(exc)
        else:
            if self._watch_medium and target.device.incarnation != target.incarnation:
                target.check_medium()   # applied to a device that restarted meanwhile: resync it

    def _flush(self) -> None:
        try:
            self.target.flush()
        except HalError as exc:
            self.errors += 1
            self.target.device_failed(exc)

    def status(self) -> dict:
        return {"from": self.source.name, "to": self.target.name, "mode": self.mode,
                "queue_depth": len(self.queue), "queued_bytes": self.queued_bytes,
                "forwarded": self.forwarded, "stalls": self.stalls, "errors": self.errors}
