"""An independent reference model of a LUN: a plain replay of the sequenced stream into a bytearray.

It shares no code with splitpoint.firmware on purpose: the controller's
backups are checked against what this model says the primary held at each
TRIGGER. WRITE puts bytes, TRIM and WRITE_ZEROES put zeros, FLUSH and READ
change nothing, TRIGGER records a snapshot of everything before it.
"""
from __future__ import annotations

WRITE = "write"
TRIM = "trim"
ZEROES = "zeroes"
FLUSH = "flush"
TRIGGER = "trigger"


class ReferenceLun:
    """The bytes a LUN must hold after a stream of requests, applied one by one in sequence order."""

    def __init__(self, size: int):
        self.size = size
        self.data = bytearray(size)
        self.snapshots: dict[int, bytes] = {}   # trigger number (from 1) -> bytes before it
        self.triggers = 0

    def apply(self, kind: str, offset: int = 0, payload: bytes | int = b"") -> None:
        """Apply one request; for TRIM/ZEROES ``payload`` is the length."""
        if kind == WRITE:
            self.data[offset:offset + len(payload)] = payload
        elif kind in (TRIM, ZEROES):
            self.data[offset:offset + payload] = bytes(payload)
        elif kind == TRIGGER:
            self.triggers += 1
            self.snapshots[self.triggers] = bytes(self.data)
        elif kind != FLUSH:
            raise ValueError(f"unknown request kind {kind!r}")

    def snapshot(self, trigger_id: int) -> bytes:
        return self.snapshots[trigger_id]


def replay(size: int, stream, upto_seq: int) -> bytes:
    """The bytes after applying every request of ``stream`` with seq < ``upto_seq``, in seq order.

    ``stream`` holds (seq, kind, offset, payload) tuples in any order.
    """
    ref = ReferenceLun(size)
    for seq, kind, offset, payload in sorted(stream, key=lambda r: r[0]):
        if seq >= upto_seq:
            break
        if kind != TRIGGER:
            ref.apply(kind, offset, payload)
    return bytes(ref.data)
