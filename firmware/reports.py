"""Reports: what a controller tells about its LUNs and backups, and reads of a backup outside the ring.

Owns the names of backup exports (``<lun>.t<id>``, ``<lun>.latest``: a
BackupTarget), finding the pool member that holds a backup, the backup listing,
direct reads of a backup, allocation runs (holes and zeros), verify and the status document.

``Reports`` is mixed into the Controller: it reads the controller's LUNs, ring,
counters, topology and recovery through their public state, and changes nothing
but demoting (through its pool) a member whose verify found other bytes than its
manifest vouches for. It never executes a request.
"""
from __future__ import annotations

import threading
import time

from splitpoint import pyx
from splitpoint.firmware import errors as E
from splitpoint.firmware.backups import BackupTarget
from splitpoint.firmware.lun import Lun
from splitpoint.firmware.metadata import MetadataStore
from splitpoint.firmware.requests import STATE_HOLE, STATE_ZERO, BackupInfo, VerifyResult


class Reports:
    """The reports of a Controller (a mixin: see the module docstring)."""

    @property
    def store(self) -> MetadataStore | None:
        """The metadata store (None: this controller keeps no metadata)."""
        return None if self.metadata is None else self.metadata.store

    @property
    def recovered(self) -> str | None:
        """How the last start found the metadata: "fresh", "clean", "crash" (None: no metadata store)."""
        return None if self.metadata is None else self.metadata.recovered

    @property
    def recovery(self) -> dict | None:
        """What the last restart resynced and why."""
        return None if self.metadata is None else self.metadata.report

    @property
    def metadata_error(self) -> str | None:
        """The last metadata problem (persisting, flushing before a persist), or None."""
        return None if self.metadata is None else self.metadata.error

    def _lun(self, lun) -> Lun:
        if isinstance(lun, Lun):
            return lun
        got = self.luns.get(lun)
        if got is None:
            raise E.NoSuchLunError(f"no LUN named {lun!r}; LUNs: {', '.join(self.luns)}")
        return got

    def backups(self, lun) -> list[BackupInfo]:
        """Consistent frozen copies of ``lun``, newest TRIGGER first."""
        lun = self._lun(lun)
        out = [m.backup_info() for pool in lun.pools for m in pool.backups()]
        out.sort(key=lambda b: (b.trigger_id, b.time), reverse=True)
        return out

    def allocation(self, lun, offset: int, length: int) -> list[tuple[int, int, int]]:
        """Allocation runs over [offset, offset+length): (offset, length, STATE_HOLE|STATE_ZERO bits)."""
        target = self.luns.get(lun) if isinstance(lun, str) else lun
        if target is None:
            target = self._resolve_target(lun)
            if target is None:
                raise E.NoSuchLunError(f"no LUN named {lun!r}; LUNs: {', '.join(self.luns)}")
        base = target.lun if isinstance(target, BackupTarget) else target
        base.check_range(offset, length, False, aligned=False)
        if isinstance(target, BackupTarget):
            return [(offset, length, 0)]
        return target.allocation(offset, length, STATE_HOLE | STATE_ZERO)

    def verify(self, lun, trigger_id=None, progress=None) -> list[VerifyResult]:
        """Recompute the digest of each consistent backup (or the one named) against its manifest."""
        lun = self._lun(lun)
        members = [self._find_backup(lun, trigger_id)] if trigger_id is not None else \
            [m for pool in lun.pools for m in pool.backups()]
        out = []
        for m in members:
            note = ""
            gen = m.generation
            manifest = m.manifest
            if manifest is None:
                continue
            if manifest.digest is None:
                # a digest taken now would only vouch for whatever the member holds now: nothing to compare
                h = m.hasher
                done = "" if h is None else f" ({100.0 * h.offset / max(h.size, 1):.0f} % hashed)"
                out.append(VerifyResult(manifest.trigger_id, m.name, None, None, None,
                                        note=f"digest pending: still being computed{done}; verify again later",
                                        pending=True))
                continue
            outcome = m.verify(progress)
            if m.generation != gen:
                out.append(VerifyResult(manifest.trigger_id, m.name, False, manifest.digest, outcome.actual,
                                        note="recycled while it was verified; verify again"))
                continue
            if not outcome.ok:
                # the bytes are not the ones the manifest vouches for: stop exporting them as a backup
                where = ", ".join(f"[{o}, {o}+{n})" for o, n in outcome.bad_regions[:4]) or "the whole copy"
                m.pool.demote(m, f"verify found a mismatch (digest {outcome.actual:016x}, manifest "
                                 f"{manifest.digest:016x}) in {where}")
                note = (note + "; " if note else "") + "demoted: no longer a consistent backup"
            out.append(VerifyResult(manifest.trigger_id, m.name, outcome.ok, manifest.digest, outcome.actual,
                                    outcome.bad_regions, note))
        return out

    def status(self) -> dict:
        """One JSON-able structure: LUNs, mirror paths, pools and members, queue, counters."""
        now = time.time()
        owner = self._owner
        mine = owner is None or owner == threading.get_ident()   # only the owner acts on a lost medium
        luns = []
        for lun in self.luns.values():
            doc = lun.status()
            doc["pools"] = [p.status(now, check=mine) for p in lun.pools]
            wi = None if self.metadata is None else self.metadata.intents.get(lun)
            doc["write_intent"] = None if wi is None else wi.status()
            doc["backups"] = [{"trigger_id": b.trigger_id, "label": b.label, "seq": b.seq, "time": b.time,
                               "member": b.member} for b in self.backups(lun)]
            doc.update(self.retention_status(lun, len(doc["backups"])))
            doc.update(self.restore_status(lun))
            luns.append(doc)
        return {"luns": luns,
                "groups": [g.status() for g in self.groups.values()],
                "queue": {"depth": len(self._ring), "capacity": self._ring.capacity, "next_seq": self._ring.next_seq,
                          "async_mirror_ops": sum(len(p) for p in self._async_paths)},
                "counters": dict(self.counters),
                "devices": self.topology.device_status(),
                "kernels": pyx.implementations(),
                "metadata": None if self.metadata is None else self.metadata.status(),
                **{name: source() for name, source in self.status_sources.items()}}
