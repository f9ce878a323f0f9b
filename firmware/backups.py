"""Backup requests: requests and reads whose target is a frozen backup (``<lun>.t<id>``, ``<lun>.latest``).

Owns the names of backup exports (a BackupTarget, and resolving one from its
name), finding the pool member that holds a backup, what each opcode does on a
backup (READ reads it; FLUSH and CACHE do nothing; a write is refused), direct
reads of a backup (``read_backup``), and the reads of a member behind a link: run
on its DeviceQueue and completed at a later poll, unless the member was recycled
or demoted meanwhile.

``BackupRequests`` is mixed into the Controller: the controller loop calls these
handlers from its opcode table. Nothing here ever writes to a backup or changes a
member's state.
"""
from __future__ import annotations

from splitpoint.firmware import errors as E
from splitpoint.firmware.lun import Lun
from splitpoint.firmware.member import FROZEN, PoolMember
from splitpoint.firmware.requests import Completion
from splitpoint.hal import HalError


class BackupTarget:
    """A request target naming a frozen backup (``<lun>.t<id>`` or ``<lun>.latest``): read-only."""

    __slots__ = ("lun", "name", "which")

    def __init__(self, lun: Lun, name: str, which):
        self.lun = lun
        self.name = name
        self.which = which   # trigger id (int) or "latest"


class LateRead:
    """A backup READ that its member's DeviceQueue runs; the completion waits for it."""

    __slots__ = ("target", "member", "generation", "offset", "length")

    def __init__(self, target, member, generation: int, offset: int, length: int):
        self.target = target
        self.member = member
        self.generation = generation
        self.offset = offset
        self.length = length


def _newest_first(m: PoolMember) -> tuple:
    """The order of "newest cut": TRIGGER ids grow per LUN across restarts (sequence numbers once did not)."""
    return (m.manifest.trigger_id, m.manifest.time)


class BackupRequests:
    """Requests on frozen backups, for a Controller (a mixin: see the module docstring)."""

    def _resolve_target(self, name):
        """The BackupTarget a name like ``lun0.t3`` or ``lun0.latest`` names, or None."""
        if not isinstance(name, str):
            return None
        base, dot, which = name.rpartition(".")
        lun = self.luns.get(base)
        if lun is None or not dot:
            return None
        if which == "latest":
            return BackupTarget(lun, name, "latest")
        if which.startswith("t") and which[1:].isdigit():
            return BackupTarget(lun, name, int(which[1:]))
        return None

    def _find_backup(self, lun: Lun, which) -> PoolMember:
        found = [m for pool in lun.pools for m in pool.backups()
                 if which == "latest" or m.manifest.trigger_id == which]
        if found:
            return max(found, key=_newest_first)
        if which == "latest":
            raise E.NoSuchBackupError(f"LUN {lun.name} has no consistent backup yet")
        raise E.NoSuchBackupError(f"LUN {lun.name} has no consistent backup cut by TRIGGER {which} "
                                  f"(never cut, recycled, or still completing)")

    def read_backup(self, lun, trigger_id, offset: int, length: int) -> bytes:
        """Bytes of the backup cut by ``trigger_id`` (or "latest")."""
        lun = self._lun(lun)
        member = self._find_backup(lun, trigger_id)
        lun.check_range(offset, length, False)
        gen = member.generation
        data = member.read(offset, length)
        if member.generation != gen or member.state != FROZEN:
            raise E.NoSuchBackupError(f"the backup of TRIGGER {trigger_id} was recycled while it was read")
        return data

    # -- the opcode table of a backup: READ; FLUSH and CACHE do nothing; no write ------------------
    def _read_backup_target(self, target: BackupTarget, op, offset, length):
        member = self._find_backup(target.lun, target.which)
        target.lun.check_range(offset, length, False)
        if member.queued:
            return LateRead(target, member, member.generation, offset, length)
        return member.read(offset, length)

    @staticmethod
    def _backup_nothing(target, op, offset, length) -> None:
        return None

    @staticmethod
    def _backup_frozen(target, op, offset, length) -> None:
        raise E.FrozenMemberError(f"{target.name} is a frozen backup and cannot be written")

    @staticmethod
    def _not_for_backup(target, op, offset, length) -> None:
        raise E.BadRequestError(f"{target.name} is a backup: only READ, FLUSH and CACHE apply")

    def _read_late(self, late: LateRead, seq: int, op: int, cb) -> None:
        """Queue a backup read on its member's DeviceQueue; it completes at a later poll."""
        def done(data, error, late=late, seq=seq, op=op, cb=cb):
            self._late.append((late, seq, op, cb, data, error))
            self._wake_owner()
        try:
            late.member.read_async(late.offset, late.length, done)
        except HalError as exc:
            done(None, exc)

    def _deliver_late(self) -> None:
        late_q = self._late
        while late_q:
            late, seq, op, cb, data, error = late_q.popleft()
            err = None
            m = late.member
            if error is not None:
                err = E.DeviceIOError(f"{late.target.name}: {error}")
            elif m.generation != late.generation or m.state != FROZEN:
                err = E.NoSuchBackupError(f"{late.target.name} was recycled or demoted while it was read")
                data = None
            if err is not None:
                self.counters["errors"] += 1
            if cb is not None:
                try:
                    cb(Completion(seq, op, err, data if err is None else None, None))
                except Exception:
                    self.counters["callback_errors"] += 1
