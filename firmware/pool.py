"""Backup pools: an ordered set of backup LUNs that rotate at each TRIGGER.

Owns the members' states and the rotation: on a TRIGGER the active member is
frozen (it becomes the point-in-time copy, with a manifest), the least
recently active member is activated and resynced incrementally from the
pool's source (only chunks written since it was last in sync) while it
already receives mirror writes. See docs/pool-states.md for every state and
transition. Each pool also saves its own record for the metadata store and,
at a restart, restores it, trusting only what survived the shutdown. It never
reports a member as a consistent backup unless the member holds exactly its
TRIGGER's point in time.

Member states:
  empty         never held data (fresh; a RAM member next to a fresh RAM source is known to be all zeros)
  active        receives mirror writes, byte-identical to the source at the stream point
  syncing       receives mirror writes, resync sweep still copying older changes
  frozen        a consistent point-in-time backup: its data flushed, then its manifest recorded (the digest
                follows in the background and may be pending, also after a crash)
  cutting       frozen at a TRIGGER while it was still syncing: pending chunks are copied from the
                source before any later write overwrites them (copy-on-write) and by the background
                sweep; becomes frozen when none are left. Never reported as a backup before that.
  inconsistent  contents unknown (crash, device error, a TRIGGER that could not be cut exactly, a board
                that lost its medium)

Each member remembers its device's ``incarnation`` when its bytes became what the pool
believes them to be (activation, resync, cut). A device whose incarnation moved on lost
its medium (a board that restarted): a frozen or cutting member is demoted, an active one
starts a full resync, a spare one resyncs in full at its next activation.
"""
from __future__ import annotations

import logging

from splitpoint.firmware.manifest import Manifest, RegionHasher
from splitpoint.firmware.member import (ACTIVE, CUTTING, EMPTY, FROZEN, INCONSISTENT, STATES, SYNCING,  # noqa: F401
                                        PoolMember)
from splitpoint.firmware.requests import FLAG_FUA, Op
from splitpoint.firmware.resync import Sweep, Throttle
from splitpoint.firmware.retention import recycled_by_trigger
from splitpoint.hal import HalError

log = logging.getLogger("splitpoint.pool")

_WRITE = int(Op.WRITE)
_TRIM = int(Op.TRIM)


class BackupPool:
    """An ordered pool of backup LUNs fed by one source node through one mirror path."""

    #: apply() turns a member's device error into that member's state, so a path may call it directly
    absorbs_errors = True

    def __init__(self, name: str, lun_name: str, source, members: list[tuple[str, object]], *,
                 region_size: int = 1 << 20, throttle: Throttle | None = None, known_zero: bool = False,
                 on_change=None, on_backups_changed=None):
        self.name = name
        self.lun_name = lun_name
        self.source = source            # the LunNode this pool copies from (primary or primary backup LUN)
        self.size = source.size
        self.chunk_size = source.chunk_size
        self.region_size = region_size
        self.throttle = throttle or Throttle(chunk_size=source.chunk_size)
        self.members = [PoolMember(self, i, url, dev, since=1 if known_zero else 0)
                        for i, (url, dev) in enumerate(members)]
        self.upstream = None            # the MirrorPath feeding this pool
        self.active: PoolMember | None = None
        self.clock = 0                  # rotations so far; orders members by when they were last active
        self.rotations = 0
        self.refuse_last_copy = False   # refuse a TRIGGER that would leave the LUN without a backup
        self.on_change = on_change or (lambda pool, urgent: None)          # persist pool state
        self.on_backups_changed = on_backups_changed or (lambda pool: None)
        first = self.members[0]
        self.activate(first, notify=False)

    # -- mirror target ---------------------------------------------------------------------
    def attach_upstream(self, path) -> None:
        self.upstream = path

    def needs_prompt_trigger(self) -> bool:
        """True when the next TRIGGER will cut a member that still needs chunks from the source:
        it must then be cut before the source applies anything queued after the TRIGGER."""
        a = self.active
        if a is None:
            return len(self.members) == 1
        return a.sweep is not None

    def apply(self, op: int, offset: int, length: int, data, flags: int, epoch: int) -> None:
        m = self.active
        if m is None:
            return
        try:
            if op == _WRITE:
                m.device.write(offset, data, flags & FLAG_FUA)
            elif op == _TRIM:
                m.device.trim(offset, length)
            else:
                m.device.write_zeroes(offset, length, flags & FLAG_FUA)
        except HalError as exc:
            self._member_failed(m, exc)

    def flush_members(self) -> None:
        """Flush every member's device (a clean close); a HalError reaches the caller."""
        for m in self.members:
            m.device.flush()

    def flush(self) -> None:
        m = self.active
        if m is not None:
            try:
                m.device.flush()
            except HalError as exc:
                self._member_failed(m, exc)

    def device_failed(self, exc) -> None:
        if self.active is not None:
            self._member_failed(self.active, exc)

    def device_failed_member(self, m: PoolMember, exc) -> None:
        self._member_failed(m, exc)

    def trigger(self, event) -> None:
        """The TRIGGER reached the backup side: freeze the active member, rotate to the LRU one."""
        self.check_devices(cutting=True)
        nxt, _pinned = recycled_by_trigger(self)   # the controller refused the TRIGGER if pins block it
        a = self.active
        if a is not None:
            self.active = None
            self._freeze(a, event)
            a.last_active = self.clock
            if getattr(a.device, "cuts_itself", False):
                self._forward_cut(a, event)
        self.clock += 1
        self.rotations += 1
        if len(self.members) == 1 and nxt is not None:
            # a pool of one: the member frozen at the previous TRIGGER is refreshed and cut here
            self.activate(nxt)
            self.active = None
            self._freeze(nxt, event)
            nxt.last_active = self.clock
        elif nxt is not None:
            self.activate(nxt)
        elif len(self.members) > 1:
            log.warning("%s: every other member is a pinned backup; nothing mirrors %s", self.name, self.lun_name)
        self.on_change(self, True)
        self.on_backups_changed(self)

    @staticmethod
    def _forward_cut(m: PoolMember, event) -> None:
        """``m``'s device is a controller (a device link, a board running the firmware): it cuts itself at
        this TRIGGER, in order behind the writes; as MISSED unless ``m`` holds this point exactly now."""
        try:
            m.device.trigger(event.id, event.label, missed=m.state != FROZEN)
        except HalError as exc:   # the member's own cut stands; the device's next op reports the failure
            log.warning("%s: TRIGGER %d not delivered to its device: %s", m.name, event.id, exc)

    # -- transitions ---------------------------------------------------------------------
    def start_in_sync(self) -> None:
        """The source and the first member are known to hold the same bytes (both fresh RAM): no resync."""
        first = self.members[0]
        first.sweep, first.state = None, ACTIVE

    def activate(self, m: PoolMember, notify: bool = True) -> None:
        """Make ``m`` the member that mirrors the source from now on (at start, on a TRIGGER or after a restore)."""
        was_backup = m.state == FROZEN
        if m.state == CUTTING:
            self._uncow(m)
            since = m.sweep.since
        elif m.state in (FROZEN, EMPTY, ACTIVE):
            since = m.since
        else:
            since = 0
        if m.device.incarnation != m.incarnation:
            since = 0           # its medium was lost since the pool last knew its bytes: copy everything
        m.incarnation = m.device.incarnation
        m.generation += 1
        m.manifest = None
        m.hasher = None
        m.proven = False
        m.error = None
        m.sweep = Sweep(self.source.epochs, since, deadline=self.throttle.deadline)
        m.state = SYNCING
        self.active = m
        if notify and was_backup:
            self.on_backups_changed(self)

    def _freeze(self, m: PoolMember, event) -> None:
        m.manifest = Manifest(trigger_id=event.id, label=event.label, seq=event.seq, epoch=event.epoch,
                              time=event.time, size=self.size, region_size=self.region_size)
        if m.state == INCONSISTENT and m.error:
            self._make_inconsistent(m, f"cut while its contents were unknown: {m.error}")
            return
        if not event.exact or m.state == INCONSISTENT:
            self._make_inconsistent(m, "cut by a TRIGGER that could not be delivered at its exact point")
            return
        if m.sweep is None:
            self._frozen(m)
        else:
            m.sweep.until = event.epoch
            m.state = CUTTING
            self.source.cow.append(m)

    def _frozen(self, m: PoolMember) -> None:
        """``m`` holds its cut exactly: flush it, so the manifest recorded next vouches for durable bytes.
        From then on it is a consistent backup, also across a crash; its digest follows in the background."""
        try:
            if m.queued:
                m.device.flush_and_wait()   # its writes are still queued: durable first, then a backup
            else:
                m.device.flush()
        except HalError as exc:
            self._make_inconsistent(m, f"device error while flushing the cut: {exc}")
            log.warning("%s: not a backup: %s", m.name, m.error)
            return
        m.state = FROZEN
        m.sweep = None
        m.since = m.manifest.epoch + 1
        m.proven = True
        m.hasher = RegionHasher(m.device, self.region_size, self.size)

    def _make_inconsistent(self, m: PoolMember, why: str) -> None:
        if m.state == CUTTING:
            self._uncow(m)
        m.state = INCONSISTENT
        m.error = why
        m.pinned = False    # no longer a backup: nothing left to keep
        m.sweep = None
        m.hasher = None
        m.proven = False
        m.since = 0

    def _uncow(self, m: PoolMember) -> None:
        try:
            self.source.cow.remove(m)
        except ValueError:
            pass

    def demote(self, m: PoolMember, why: str) -> None:
        """``m`` no longer holds what it should (a failed verify, a device error): never a backup again
        until it is recycled and resynced in full."""
        was_backup = m.state == FROZEN
        log.warning("%s demoted%s: %s", m.name,
                    f" (backup t{m.manifest.trigger_id})" if was_backup and m.manifest else "", why)
        if self.active is m:
            self.active = None
        self._make_inconsistent(m, why)
        self.on_change(self, True)
        if was_backup:
            self.on_backups_changed(self)

    def _member_failed(self, m: PoolMember, exc) -> None:
        self.demote(m, f"device error: {exc}")

    def check_devices(self, cutting: bool = False) -> None:
        """Act on every member whose device lost its medium since the pool last knew its bytes.

        ``cutting``: a TRIGGER is about to freeze the active member. It can still be cut (as a member
        mid-resync is) when the source sits exactly at the TRIGGER; otherwise that cut is not a backup."""
        for m in self.members:
            inc = m.device.incarnation
            if inc == m.incarnation:
                continue
            why = f"its device lost its medium (board reset: incarnation {m.incarnation} -> {inc})"
            m.incarnation = inc
            if m is self.active:
                if cutting and self.upstream is not None and not self.upstream.sync and len(self.upstream):
                    # the source already applied writes queued after this TRIGGER: it cannot be rebuilt
                    self._make_inconsistent(m, why)
                    log.warning("%s: %s; the next cut is not a backup", m.name, why)
                else:
                    log.warning("%s: %s; full resync", m.name, why)
                m.since = 0
                m.sweep = Sweep(self.source.epochs, 0, deadline=self.throttle.deadline)
                if m.state != INCONSISTENT:
                    m.state = SYNCING
                self.on_change(self, True)
            elif m.state in (FROZEN, CUTTING):
                self.demote(m, why)
            else:
                m.since = 0     # a spare: its next activation copies everything
                self.on_change(self, False)

    # -- background work -----------------------------------------------------------------
    def has_background(self) -> bool:
        if self.active is not None and self.active.sweep is not None:
            return True
        return any(m.state == CUTTING or m.hasher is not None for m in self.members)

    def background(self, busy: bool, force: bool = False) -> int:
        """One bounded slice of resync, cut completion and digest work; returns bytes moved or hashed.

        ``force`` ignores the throttle (finishing everything now, e.g. before a test compares)."""
        self.check_devices()
        work = 0
        src = self.source.device
        a = self.active
        if a is not None and a.sweep is not None:
            if self.upstream is not None and len(self.upstream):
                self.upstream.drain()   # the source must not be ahead of the member while copying from it
            budget = self.throttle.slice if force else self.throttle.budget(a.sweep, busy)
            if budget > 0:
                try:
                    n = a.sweep.step(src, a.device, budget)
                except HalError as exc:
                    self._member_failed(a, exc)
                    return work
                if not force:
                    self.throttle.spend(n)
                work += n or 1
            if a.sweep is not None and a.sweep.done:
                a.sweep = None
                a.state = ACTIVE
                self.on_change(self, False)
        swept = work
        for m in self.members:
            if m.state != CUTTING:
                continue
            budget = self.throttle.slice if force else self.throttle.budget(m.sweep, busy)
            if budget <= 0:
                continue
            try:
                n = m.sweep.step(src, m.device, budget)
            except HalError as exc:
                self._member_failed(m, exc)
                continue
            if not force:
                self.throttle.spend(n)
            swept += n or 1
            if m.sweep.done:
                self._uncow(m)
                self._frozen(m)
                self.on_change(self, True)    # recorded now: from then on a backup across a crash too
                self.on_backups_changed(self)
        if swept and not force:
            return swept    # redundancy first: digests only record what is already consistent
        work = swept
        for m in self.members:
            h = m.hasher
            if h is None:
                continue
            budget = self.throttle.slice if force else self.throttle.budget(None, busy)
            sized = getattr(m.device, "read_budget", None)
            if sized is not None and not force:
                budget = min(budget, sized())   # a slow link: a digest read takes a bounded time
            if budget <= 0:
                continue
            try:
                n = h.step(budget)
                if not force:
                    self.throttle.spend(n)
                work += n or 1
                if h.done:
                    self._digested(m)
            except HalError as exc:
                self._member_failed(m, exc)
        return work

    def _digested(self, m: PoolMember) -> None:
        from splitpoint.firmware.manifest import combine
        self.check_devices()
        if m.state != FROZEN:
            return      # demoted while it was hashed: those bytes are not the cut's
        m.manifest.regions = m.hasher.regions
        m.manifest.digest = combine(m.hasher.regions)
        m.hasher = None
        self.on_change(self, False)
        self.on_backups_changed(self)

    def finish_digest(self, m: PoolMember) -> None:
        """Complete a frozen member's digest now (verify asked before the background got there)."""
        if m.hasher is not None:
            m.hasher.finish()
            self._digested(m)

    def finish(self) -> None:
        """Apply what the upstream path still queues, then complete every sweep and digest now (settle)."""
        if self.upstream is not None:
            self.upstream.drain()
        while self.has_background():
            self.background(False, force=True)

    # -- the persisted record ----------------------------------------------------------------
    def save_state(self) -> dict:
        """What the metadata store keeps of this pool: its rotation clock and every member's record."""
        return {"name": self.name, "clock": self.clock, "rotations": self.rotations,
                "active": None if self.active is None else self.active.index,
                "members": [m.save_state() for m in self.members]}

    def follow_source_maps(self) -> None:
        """The source's epoch map was replaced (loaded at a restart): every sweep reads the new one."""
        for m in self.members:
            if m.sweep is not None:
                m.sweep.epochs = self.source.epochs

    def restore_state(self, doc: dict, clean: bool, intent=None, report: list | None = None) -> None:
        """Take back the state ``save_state`` recorded, trusting of it only what survived the shutdown.

        ``clean``: a clean close of a persistent source, so the record is exact. After a crash,
        ``intent`` (the write-intent set, already merged into the source's epoch map) means the
        epoch map bounds what changed: proven backups keep their ``since`` and the active member
        resyncs only the intent chunks and what it still had pending. Without it every resync is
        in full. ``report`` gets one entry per member saying what it became and why."""
        self.clock = int(doc["clock"])
        self.rotations = int(doc["rotations"])
        self.active = None
        self.source.cow = [m for m in self.source.cow if m.pool is not self]
        incremental = intent is not None
        for m, md in zip(self.members, doc["members"]):
            self._restore_member(m, md, clean, incremental)
        idx = doc["active"]
        why = {}
        if idx is not None:
            m = self.members[idx]
            md = doc["members"][idx]
            if clean and m.keeps_bytes and m.state in (ACTIVE, SYNCING):
                self.active = m
            elif incremental and m.keeps_bytes and (md["state"] == ACTIVE or
                                                    (md["state"] == SYNCING and md["sweep"] is not None)):
                self._resume_after_crash(m, md, intent)
                why[m.index] = ("in sync at the last persist: only the write-intent chunks"
                                if md["state"] == ACTIVE else
                                "was resyncing: its pending chunks and the write-intent chunks")
            else:
                m.state = INCONSISTENT
                self.activate(m, notify=False)
                why[m.index] = ("the epoch maps cannot be trusted: full resync" if not incremental and not clean
                                else "contents unknown: full resync")
        elif not clean and len(self.members) > 1:
            nxt = min(self.members, key=lambda x: (x.last_active, x.index))
            self.activate(nxt, notify=False)
            why[nxt.index] = "reactivated after the crash"
        if report is not None and not clean:
            for m, md in zip(self.members, doc["members"]):
                entry = {"member": m.name, "was": md["state"], "state": m.state}
                if m.sweep is not None:
                    entry["resync_chunks"] = m.sweep.pending_chunks()
                    entry["why"] = why.get(m.index, "")
                elif m.state == FROZEN:
                    entry["why"] = "proven before the crash: still a backup"
                elif m.error:
                    entry["why"] = m.error
                report.append(entry)

    def _restore_member(self, m: PoolMember, md: dict, clean: bool, incremental: bool) -> None:
        m.last_active = int(md["last_active"])
        m.generation = int(md["generation"]) + 1
        m.manifest = None if md["manifest"] is None else Manifest.from_dict(md["manifest"])
        m.sweep = None
        m.hasher = None
        m.error = None
        state = md["state"]
        if not m.keeps_bytes:
            m.state, m.since, m.manifest, m.proven = EMPTY, 0, None, False
        elif clean:
            m.state, m.since, m.proven = state, int(md["since"]), bool(md["proven"])
            s = md["sweep"]
            if s is not None:
                m.sweep = Sweep(self.source.epochs, int(s["since"]), deadline=self.throttle.deadline,
                                cursor=int(s["cursor"]), until=s["until"])
            if state == CUTTING:
                self.source.cow.append(m)
        elif state == FROZEN and md["proven"] and m.manifest is not None:
            # flushed before its manifest was recorded: a backup (its digest may still be pending);
            # with trusted maps its next resync is still incremental
            m.state, m.since, m.proven = FROZEN, int(md["since"]) if incremental else 0, True
        else:
            m.state, m.since, m.manifest, m.proven = INCONSISTENT, 0, None, False
            m.error = "not proven consistent before an unclean shutdown"
        m.pinned = m.state == FROZEN and bool(md.get("pinned"))
        if m.state == FROZEN and m.manifest is not None and m.manifest.digest is None:
            m.hasher = RegionHasher(m.device, self.region_size, self.size)   # the digest still to compute

    def _resume_after_crash(self, m: PoolMember, md: dict, intent) -> None:
        """The active member at the crash: it differs from the source at most in the chunks the
        intent set names and, if it was resyncing, in what its sweep had not reached."""
        m.manifest, m.proven, m.error = None, False, None
        if md["state"] == ACTIVE:
            # the intent chunks, and only they, carry the new epoch
            since, cursor = self.source.epoch, 0
        else:
            s = md["sweep"]
            since, cursor = int(s["since"]), int(s["cursor"])
            first = intent.next_set(0)
            if 0 <= first < cursor:
                cursor = first   # intent chunks behind the cursor: rescan from the first (a superset)
        m.sweep = Sweep(self.source.epochs, since, deadline=self.throttle.deadline, cursor=cursor)
        m.since = since
        m.state = SYNCING
        self.active = m

    # -- reporting -------------------------------------------------------------------------
    def backups(self) -> list[PoolMember]:
        """Consistent frozen members, newest TRIGGER first. Safe off the owner thread (verify): a member
        whose device lost its medium is left out here and demoted by the owner's next check_devices()."""
        out = [m for m in self.members if m.consistent]
        out.sort(key=lambda m: m.manifest.trigger_id, reverse=True)
        return out

    def state(self) -> str:
        a = self.active
        if a is None:
            return "split"
        return "syncing" if a.sweep is not None else "mirroring"

    def status(self, now: float, check: bool = True) -> dict:
        """``check``: act on lost media first (owner thread only); otherwise only report them."""
        if check:
            self.check_devices()
        return {"name": self.name, "source": self.source.name, "state": self.state(),
                "mirror": None if self.upstream is None else self.upstream.mode,
                "queue_depth": 0 if self.upstream is None else len(self.upstream),
                "rotations": self.rotations,
                "active": None if self.active is None else self.active.index,
                "members": [m.status(now) for m in self.members]}
