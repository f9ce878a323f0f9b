"""Restore: a LUN becomes the bytes of one of its backups, at one point of its request stream.

Owns the RESTORE request (``Op.RESTORE``, queued in the LUN's ring like a TRIGGER; its label
slot names the backup). When the controller dequeues it, every write queued before it is
undone and every write queued after it applies on top, because the copy runs right there,
in sequence, on the owner thread:

- from a backup of the same LUN, only the chunks whose epoch is after the backup's cut are
  copied (the epoch map says which can differ; the others still hold the cut's bytes);
- into another LUN of the same geometry (a writable clone), every chunk is copied.

Each copied extent is declared in the LUN's write-intent set first and then applied through
the LUN like a host write, so the epoch map, copy-on-write of cuts still completing and
every mirror path see it, and a crash mid-copy is recovered as for any other write. The
backup itself is only read; the pool's other backups stay intact.

What this does not do (yet): run the copy in the background while later requests are
served (copy on read), report its progress, or resume a copy interrupted by a crash as a
restore. While a RESTORE runs, the LUN's later requests wait for it.

``Restores`` is mixed into the Controller; its handler is called from the opcode table.
"""
from __future__ import annotations

from dataclasses import dataclass

from splitpoint.firmware import errors as E
from splitpoint.firmware.member import FROZEN
from splitpoint.firmware.requests import Op

_WRITE = int(Op.WRITE)
#: bytes read from the backup and applied per step of the copy
RESTORE_PIECE = 1 << 20


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What a RESTORE's completion carries (``Completion.data``)."""

    lun: str         # the LUN restored
    seq: int         # the RESTORE's sequence number: writes after it apply on top
    backup: str      # the backup restored from (``<lun>.t<id>``)
    copied: int      # bytes copied from the backup
    full: bool       # True: every chunk (a clone into another LUN); False: only the changed ones


class Restores:
    """RESTORE requests of a Controller (a mixin: see the module docstring)."""

    def _restore(self, lun, seq, op, offset, length, data, flags, label, refused) -> RestoreResult:
        if not isinstance(label, str) or not label:
            raise E.BadRequestError("RESTORE needs a backup name, like lun0.t3")
        target = self._resolve_target(label)
        if target is None:
            raise E.NoSuchBackupError(f"{label!r} names no backup; a backup is <lun>.t<id> or <lun>.latest")
        if lun.read_only:
            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
        member = self._find_backup(target.lun, target.which)
        if member.queued:
            raise E.BadRequestError(f"{label} is on a device behind a link; restoring from it is not supported")
        source = target.lun
        if source is lun:
            extents = lun.epochs.extents_since(member.manifest.epoch + 1)
        else:
            if (source.size, source.block_size) != (lun.size, lun.block_size):
                raise E.GeometryError(f"{label} is {source.size} bytes in blocks of {source.block_size}; "
                                      f"LUN {lun.name} is {lun.size} in blocks of {lun.block_size}")
            extents = [(0, lun.size)]
        meta = self.metadata
        if meta is not None and lun in meta.intents and extents:
            why = (meta.declare_intent([(lun, o, n) for o, n in extents]) or {}).get(lun)
            if why:
                raise E.MetadataError(why)
        gen = member.generation
        copied = 0
        for ext_off, ext_len in extents:
            pos, end = ext_off, ext_off + ext_len
            while pos < end:
                n = min(RESTORE_PIECE, end - pos)
                lun.apply(_WRITE, pos, n, member.read(pos, n), 0, lun.epoch)
                pos += n
                copied += n
        if member.generation != gen or member.state != FROZEN:
            raise E.DeviceIOError(f"{label} stopped being a consistent backup during the restore: "
                                  f"LUN {lun.name} holds mixed data; restore again from another backup")
        counters = self.counters
        counters["restores"] = counters.get("restores", 0) + 1
        counters["bytes_restored"] = counters.get("bytes_restored", 0) + copied
        return RestoreResult(lun.name, seq, f"{source.name}.t{member.manifest.trigger_id}", copied,
                             source is not lun)

    def restore(self, lun, backup: str) -> RestoreResult:
        """Blocking: queue ``RESTORE <backup>`` on ``lun`` and wait until the LUN holds the backup's bytes."""
        return self._call(lun, int(Op.RESTORE), label=backup).data
