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

On a LUN with metadata, the LUN's record names the backup being restored from before the
first byte is copied, and stops naming it once the copy is flushed. A restart that finds it
named (kill -9 mid-copy) copies again from the same backup before any request is served
(``resume_restores``): no later request had run, so the result is exact.

What this does not do (yet): run the copy in the background while later requests are
served (copy on read) or report its progress. While a RESTORE runs, the LUN's later
requests wait for it.

``Restores`` is mixed into the Controller; its handler is called from the opcode table.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from splitpoint.firmware import errors as E
from splitpoint.firmware.member import FROZEN
from splitpoint.firmware.requests import Op

_WRITE = int(Op.WRITE)
log = logging.getLogger("splitpoint.restore")
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
        backup = f"{source.name}.t{member.manifest.trigger_id}"
        durable = meta is not None and lun.persistent
        if durable:
            lun.restoring = backup
            meta.persist(lun)   # before the first byte: a crash from here on resumes this restore at the restart
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
        if durable:
            lun.flush()         # the restored bytes are durable before the record stops saying "restoring"
            lun.restoring = None
            meta.persist(lun)
        counters = self.counters
        counters["restores"] = counters.get("restores", 0) + 1
        counters["bytes_restored"] = counters.get("bytes_restored", 0) + copied
        return RestoreResult(lun.name, seq, backup, copied, source is not lun)

    def restore(self, lun, backup: str) -> RestoreResult:
        """Blocking: queue ``RESTORE <backup>`` on ``lun`` and wait until the LUN holds the backup's bytes."""
        return self._call(lun, int(Op.RESTORE), label=backup).data

    def resume_restores(self) -> None:
        """At a restart: finish every RESTORE a crash interrupted, before any request is served. No
        request after it had run (it runs in its place in the sequence), so copying again from the
        same backup is exact: the epoch map, with the write-intent set merged, covers what it wrote."""
        for lun in self.luns.values():
            name = lun.restoring
            if not name:
                continue
            try:
                result = self._restore(lun, 0, int(Op.RESTORE), 0, 0, None, 0, name, None)
            except E.ControllerError as exc:
                lun.restore_note = (f"a RESTORE from {name} was interrupted and cannot resume ({exc}): "
                                    f"{lun.name} holds part of it; restore again")
                log.error("%s", lun.restore_note)
                continue
            lun.restore_note = f"a RESTORE from {name} was interrupted by a crash and resumed ({result.copied} bytes)"
            log.warning("%s: %s", lun.name, lun.restore_note)

    def restore_status(self, lun) -> dict:
        """The ``status`` fields of ``lun``'s restores."""
        return {"restoring": lun.restoring, "restore_note": lun.restore_note}
