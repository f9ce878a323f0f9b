"""Requests and what comes back from them.

Owns the controller's own vocabulary: the opcodes and flags a ring
descriptor carries, the allocation states it reports, the completion handed to
a producer's callback, and the records the controller reports (a TRIGGER's
result, a backup, a verify result). The numbers are the controller's alone: a
front end translates its protocol's words into them once, at its edge, and a
word passed through untranslated is refused rather than read as another
request. Nothing here executes a request.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Op(enum.IntEnum):
    """Request opcodes (u16 in a ring descriptor); 0 is no opcode."""

    READ = 1
    WRITE = 2
    TRIM = 3
    WRITE_ZEROES = 4
    FLUSH = 5
    CACHE = 6
    TRIGGER = 7
    RESTORE = 8      # the LUN becomes a backup's bytes at this point of its stream (firmware/restore.py)


#: descriptor flags (u16). The low byte is never used: a protocol's flag word that reaches the
#: controller untranslated has its bits there, and is refused as unknown
FLAG_FUA = 1 << 8        # the write is durable before it completes
FLAG_NO_HOLE = 1 << 9    # WRITE_ZEROES: keep the range allocated
FLAG_FAST_ZERO = 1 << 10  # WRITE_ZEROES: fail rather than write zeros slowly (never slow here)
FLAGS_KNOWN = FLAG_FUA | FLAG_NO_HOLE | FLAG_FAST_ZERO
#: WRITE, TRIM, WRITE_ZEROES: the range need not be block-aligned; the controller reads, modifies and
#: writes the partial blocks when it executes the request, so it stays one request in the sequence
FLAG_SUB_BLOCK = 1 << 11

#: ops that change the bytes of a LUN (marked in its epoch map, forwarded on the mirror path)
DATA_OPS = frozenset((Op.WRITE, Op.TRIM, Op.WRITE_ZEROES))
#: ops with an (offset, length) range that must be in bounds and aligned
RANGE_OPS = frozenset((Op.READ, Op.WRITE, Op.TRIM, Op.WRITE_ZEROES, Op.CACHE))

#: allocation states Controller.allocation reports for an extent (0: allocated data)
STATE_HOLE = 1 << 0   # not allocated on the device
STATE_ZERO = 1 << 1   # reads as zeros


def label_bytes(label) -> bytes:
    """A TRIGGER label as bytes (str is UTF-8 encoded); None is the empty label."""
    if label is None:
        return b""
    if isinstance(label, str):
        return label.encode("utf-8")
    return bytes(label)


def label_text(raw: bytes) -> str:
    """A label as text for reports; bytes that are not UTF-8 are shown escaped, never dropped."""
    return raw.decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True, slots=True)
class TriggerResult:
    """What a trigger source gets back once the split is done."""

    id: int          # TRIGGER number on its LUN, counted from 1 (export lun0.t<id>)
    seq: int         # sequence number the TRIGGER got in the ring
    epoch: int       # the epoch the split closed: the backup holds every write of epochs <= this
    label: str       # the label, decoded for display
    lun: str = ""    # the LUN it cut
    warning: str | None = None   # the cut left the LUN without a consistent backup (firmware/retention.py)


@dataclass(slots=True)
class Completion:
    """Handed to a request's callback on the controller's owner thread."""

    seq: int
    op: int
    error: Exception | None = None   # None, or a ControllerError with .errno
    data: bytes | None = None        # READ: the bytes
    trigger: TriggerResult | None = None  # TRIGGER: its result

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A consistent frozen copy a LUN's pools hold."""

    trigger_id: int
    label: str
    seq: int
    epoch: int
    time: float      # wall time of the cut (seconds since the epoch)
    member: str      # "<pool>[<index>]", e.g. "lun0.pool[1]"
    digest: int | None = None  # whole-copy digest once computed (None while it is being computed)


@dataclass(slots=True)
class VerifyResult:
    """The outcome of recomputing one frozen copy's digest against its manifest."""

    trigger_id: int
    member: str
    ok: bool | None                  # None while the digest is pending (nothing to compare yet)
    expected: int | None
    actual: int | None
    bad_regions: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) that differ
    note: str = ""
    pending: bool = False            # the manifest's digest is still being computed
