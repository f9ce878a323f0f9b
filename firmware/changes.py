"""Changed-block maps: the chunks that changed since a backup's cut, up to the live LUN or to a later backup.

Owns the answer to "which extents differ between backup A and B (or the live LUN)" that
incremental-backup clients read (NBD ``qemu:dirty-bitmap:<backup>`` contexts, ``splitpoint
diff``). It is derived from the LUN's epoch map, which keeps for each chunk the epoch of its
newest write, TRIM or WRITE_ZEROES. A backup cut at epoch E holds every write of epochs <= E,
so a chunk whose epoch is > E may differ from it, and a chunk whose epoch is <= E does not.

Between two backups the older cut decides: a chunk written after the older cut is reported
changed even when the write came after the newer cut as well, since the epoch map keeps only
the newest epoch. That errs on the side of "changed" and never misses a chunk. After a restart
whose epoch maps could not be trusted, recovery marks every chunk written in the new epoch,
so every older cut then reports the whole LUN changed.

``ChangedBlocks`` is mixed into the Controller; it only reads the epoch map and manifests
and changes nothing.
"""
from __future__ import annotations

from splitpoint.firmware import errors as E


class ChangedBlocks:
    """Changed-block maps of a Controller's LUNs (a mixin: see the module docstring)."""

    def _cut_of(self, name: str):
        """(LUN, epoch of the cut) of the backup ``name`` (``<lun>.t<id>``, ``<lun>.latest``)."""
        target = self._resolve_target(name)
        if target is None:
            raise E.NoSuchBackupError(f"{name!r} names no backup; a backup is <lun>.t<id> or <lun>.latest "
                                      f"(LUNs: {', '.join(self.luns)})")
        member = self._find_backup(target.lun, target.which)
        return target.lun, member.manifest.epoch

    def changed_since(self, older: str, newer: str | None = None, offset: int = 0,
                      length: int | None = None) -> list[tuple[int, int, bool]]:
        """Runs (offset, length, changed) covering [offset, offset+length) of the LUN of backup ``older``:
        changed between ``older`` and backup ``newer`` (None: the live LUN). The two are taken in
        either order; both must be backups of one LUN."""
        lun, cut = self._cut_of(older)
        if newer is not None and newer != lun.name:
            other, other_cut = self._cut_of(newer)
            if other is not lun:
                raise E.BadRequestError(f"{older} and {newer} are backups of different LUNs")
            cut = min(cut, other_cut)
        if length is None:
            length = lun.size - offset
        lun.check_range(offset, length, False, aligned=False)
        cs = lun.chunk_size
        end = offset + length
        out: list[tuple[int, int, bool]] = []
        pos = offset
        for run_off, run_len in lun.epochs.extents_since(cut + 1, offset // cs, (end - 1) // cs + 1):
            start, stop = max(run_off, offset), min(run_off + run_len, end)
            if start >= stop:
                continue
            if start > pos:
                out.append((pos, start - pos, False))
            out.append((start, stop - start, True))
            pos = stop
        if pos < end:
            out.append((pos, end - pos, False))
        return out

    def bitmap_names(self, lun, except_id: int | None = None, latest: bool = False) -> list[str]:
        """The backups of ``lun`` a changed-block map can start from (``<lun>.t<id>``, oldest first;
        then ``<lun>.latest`` when ``latest`` and there is a backup)."""
        name = self._lun(lun).name
        names = [f"{name}.t{b.trigger_id}" for b in sorted(self.backups(lun), key=lambda b: b.trigger_id)
                 if b.trigger_id != except_id]
        return names + [f"{name}.latest"] if latest and names else names
