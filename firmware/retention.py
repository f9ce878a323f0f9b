"""Retention: which pool member a TRIGGER may recycle, pins, and what a cut leaves behind.

Owns the retention rules every pool applies at a TRIGGER: the member rotation moves to
(least recently active, skipping pinned backups), pinning and unpinning a backup (a pin
is a flag on the pool member that holds it, kept in the pool's record), and the check
a TRIGGER makes on its LUN *before* it splits:

- a pool of the LUN with no member to rotate to (every other member is a pinned
  backup): the TRIGGER is refused (``PinnedError``) and cuts nothing;
- a cut that would leave the LUN without any consistent backup (the only one is
  recycled while the new cut is still completing, e.g. in a pool of 2 during a
  resync): the TRIGGER goes ahead with a warning, or is refused (``LastCopyError``)
  when a pool of the LUN says ``refuse_last_copy``.

A backup is named as the exports name it: ``<lun>.t<id>`` or ``<lun>.latest`` (the
newest consistent backup when the PIN is handled). ``BackupRetention`` is mixed into
the Controller; its calls run on the owner thread. Nothing here changes a member's
bytes or state other than its pin: the pool carries out the rotation.
"""
from __future__ import annotations

import errno as _errno
import logging
import threading

from splitpoint.firmware import errors as E
from splitpoint.firmware.member import ACTIVE, FROZEN

log = logging.getLogger("splitpoint.retention")


class PinnedError(E.ControllerError):
    """A TRIGGER found no member to rotate to: the pool's other members are pinned backups."""

    errno = _errno.EBUSY


class LastCopyError(E.ControllerError):
    """A TRIGGER would have left the LUN without a consistent backup, and the configuration refuses that."""

    errno = _errno.EBUSY


def backup_name(m) -> str:
    """The export name of the backup member ``m`` holds (``<lun>.t<id>``)."""
    return f"{m.pool.lun_name}.t{m.manifest.trigger_id}"


def next_member(pool, active):
    """The member a TRIGGER of ``pool`` rotates to: the least recently active one that is neither
    ``active`` nor a pinned backup, or None when there is none."""
    free = [m for m in pool.members if m is not active and not m.pinned]
    return min(free, key=lambda m: (m.last_active, m.index)) if free else None


def recycled_by_trigger(pool):
    """(the member the next TRIGGER recycles or None, the pinned members that block it or [])."""
    a = pool.active
    if len(pool.members) == 1:
        m = pool.members[0]
        if a is not None:
            return None, []           # the first cut of a pool of one recycles nothing
        return (None, [m]) if m.pinned else (m, [])
    nxt = next_member(pool, a)
    if nxt is None:
        return None, [m for m in pool.members if m.pinned]
    return nxt, []


def check_trigger(lun) -> str | None:
    """Before ``lun`` splits: raise PinnedError or LastCopyError (nothing is cut), else return the
    warning the TRIGGER's reply carries (None: no warning)."""
    before = after = 0
    recycled = []
    refuse = False
    for pool in lun.pools:
        nxt, pinned = recycled_by_trigger(pool)
        if pinned:
            raise PinnedError(f"pool {pool.name} has no member to rotate to: pinned backups "
                              f"{', '.join(backup_name(m) for m in pinned)} (UNPIN one); nothing was cut")
        refuse = refuse or pool.refuse_last_copy
        for m in pool.members:
            if m.consistent:
                before += 1
                if m is nxt:
                    recycled.append(backup_name(m))
                else:
                    after += 1
        a = pool.active
        if a is not None and a.state == ACTIVE and a.sweep is None:
            after += 1                # in sync: its cut is a backup at once
    if not before or after:
        return None
    what = ", ".join(recycled)
    if refuse:
        raise LastCopyError(f"this TRIGGER would recycle {what}, the only consistent backup of {lun.name}, "
                            f"while the new cut is still completing (refuse_last_copy = true); nothing was cut")
    return f"no-consistent-backup recycled={what}"


class BackupRetention:
    """Pins of a Controller's backups (a mixin: see the module docstring)."""

    def _pin_members(self, name: str) -> list:
        target = self._resolve_target(name)
        if target is None:
            raise E.NoSuchBackupError(f"{name!r} names no backup; a backup is <lun>.t<id> or <lun>.latest "
                                      f"(LUNs: {', '.join(self.luns)})")
        found = self._find_backup(target.lun, target.which)
        tid = found.manifest.trigger_id
        # every pool of the LUN that holds this cut keeps it (a cascade may hold it twice)
        return [m for pool in target.lun.pools for m in pool.members
                if m.state == FROZEN and m.manifest is not None and m.manifest.trigger_id == tid]

    def _owner_only(self, what: str) -> None:
        owner = self._owner
        if owner is not None and owner != threading.get_ident():
            raise E.ControllerError(f"{what} runs on the controller's owner thread")

    def pin(self, name: str) -> list[str]:
        """Pin the backup ``name`` (``<lun>.t<id>`` or ``<lun>.latest``): rotation never recycles it.
        Returns the members pinned; the pin is persisted at once."""
        return self._set_pin(name, True)

    def unpin(self, name: str) -> list[str]:
        """Let rotation recycle the backup ``name`` again (unpinning an unpinned backup is no error)."""
        return self._set_pin(name, False)

    def _set_pin(self, name: str, pinned: bool) -> list[str]:
        self._owner_only("PIN" if pinned else "UNPIN")
        with self._inline_lock:
            members = self._pin_members(name)
            for m in members:
                if m.pinned != pinned:
                    m.pinned = pinned
                    log.info("%s %s (%s)", "pinned" if pinned else "unpinned", backup_name(m), m.name)
                    m.pool.on_change(m.pool, True)
            return [m.name for m in members]

    def pins(self, lun) -> list[str]:
        """The pinned backups of ``lun``, oldest cut first."""
        lun = self._lun(lun)
        return sorted({backup_name(m) for pool in lun.pools for m in pool.members if m.pinned},
                      key=lambda n: int(n.rsplit(".t", 1)[1]))

    def _retention_warning(self, lun, trigger_id: int, warning: str | None) -> None:
        """Record (or clear) the warning of ``lun``'s last TRIGGER; logged once per TRIGGER."""
        if warning is None:
            self.retention_warnings.pop(lun.name, None)
            return
        log.warning("%s: TRIGGER %d left no consistent backup until its cut completes (%s)",
                    lun.name, trigger_id, warning)
        self.retention_warnings[lun.name] = f"t{trigger_id}: {warning}"

    def retention_status(self, lun, backups: int) -> dict:
        """The ``status`` fields of ``lun``'s retention: its pins, and the last TRIGGER's warning while
        the LUN still has no consistent backup (``backups``: how many it has now)."""
        return {"pinned": self.pins(lun),
                "last_copy_warning": None if backups else self.retention_warnings.get(lun.name)}
