"""Consistency groups: one TRIGGER that cuts several LUNs, on one device or several, at one consistent point.

Owns the two-phase group TRIGGER of invariant 5 (claims 6-9: a LUN spread
over several devices, the TRIGGER inserted into each device's queue).

* Prepare: a TRIGGER carrying the group's token is queued on every member
  (LUN, controller). When a device dequeues it, it splits as usual. From then
  on it *holds the completions* (acknowledgements, not execution) of every
  later request on that LUN.
* Commit: once every member has queued its TRIGGER, the token is committed
  and every device releases what it held, in order. A device that dequeues
  its TRIGGER after the commit holds nothing.

Why this is enough: let write B be issued after write A was acknowledged, and
suppose A missed its device's cut. Then A's acknowledgement waited for the
commit, the commit came after every TRIGGER was queued, so B was queued after
its device's TRIGGER too and is not in the backup either. So B in a backup
implies A in it. Nothing here touches data; each controller does its own split.
"""
from __future__ import annotations

import itertools
import threading
import time

from splitpoint.firmware import errors as E
from splitpoint.firmware.requests import Op, TriggerResult

_ids = itertools.count(1)


class GroupToken:
    """One group TRIGGER in flight; ``committed`` flips once, from the coordinator's thread."""

    __slots__ = ("id", "label", "committed")

    def __init__(self, label=None):
        self.id = next(_ids)
        self.label = label
        self.committed = False


class ConsistencyGroup:
    """LUNs (each a (Controller, lun name) pair, possibly on different controllers) cut together."""

    def __init__(self, members, name: str = "group"):
        self.members = [(ctl, lun) for ctl, lun in members]
        if not self.members:
            raise E.BadRequestError("a consistency group needs at least one (controller, LUN) member")
        for ctl, lun in self.members:
            if lun not in ctl.luns:
                raise E.NoSuchLunError(f"consistency group {name}: no LUN named {lun!r}; LUNs: {', '.join(ctl.luns)}")
        self.name = name
        self.triggers = 0

    def trigger(self, label=None) -> list[TriggerResult]:
        """Cut every member at one consistent point; returns each member's TriggerResult, in member order."""
        token = GroupToken(label)
        results: list = [None] * len(self.members)
        errors: list = []
        events = [threading.Event() for _ in self.members]

        def done(i):
            def cb(c):
                if c.error is not None:
                    errors.append(c.error)
                results[i] = c.trigger
                events[i].set()
            return cb

        # phase 1, prepare: the TRIGGER queued on every device, each holding acknowledgements after its cut
        for i, (ctl, lun) in enumerate(self.members):
            while True:
                try:
                    ctl.submit(lun, Op.TRIGGER, label=label, callback=done(i), group=token)
                    break
                except E.QueueFullError:
                    ctl.poll_or_wait()
        # phase 2, commit: every device has queued it
        token.committed = True
        for ctl in {id(c): c for c, _ in self.members}.values():
            ctl.release(token)
        for i, (ctl, _lun) in enumerate(self.members):
            while not events[i].is_set():
                ctl.poll_or_wait(events[i])
        self.triggers += 1
        if errors:
            raise errors[0]
        return results


class GroupCut:
    """What one TRIGGER of a configured group cut: each LUN's own TRIGGER result, in member order."""

    __slots__ = ("id", "group", "results", "held", "time")

    def __init__(self, id: int, group: str, results: list[TriggerResult], held: float):
        self.id = id                # the group's TRIGGER number, counted from 1 (exports <group>.t<id>.<lun>)
        self.group = group
        self.results = results
        self.held = held            # seconds from the first TRIGGER queued to the commit (acks held meanwhile)
        self.time = time.time()

    def seqs(self) -> str:
        """``<lun>:<seq>,...`` as the control channel answers it."""
        return ",".join(f"{r.lun}:{r.seq}" for r in self.results)


class ConfiguredGroup:
    """A ``[[group]]`` of this controller's LUNs, cut by one TRIGGER (``TRIGGER ON <group>``, ``trigger.<group>``).

    Prepare queues a TRIGGER carrying one token on every member LUN, in member order; every LUN that
    dequeues its TRIGGER before the commit holds the acknowledgements of its later requests. Commit
    follows as soon as every TRIGGER is queued (on one controller, queued is prepared), then the cut
    is recorded: the group's number and, per LUN, that LUN's own TRIGGER number, so the backups are
    exported as ``<group>.t<id>.<lun>`` too. The record persists in the metadata store (when there is
    one) and keeps only cuts of which some LUN still holds the backup."""

    def __init__(self, name: str, luns: list, store=None):
        self.name = name
        self.luns = list(luns)
        self.store = store
        self.next_id = 1
        self.cuts: dict[int, dict[str, int]] = {}     # group TRIGGER id -> {lun name: that LUN's TRIGGER id}
        self.last: GroupCut | None = None
        self.failures = 0
        if store is not None:
            got = store.read_json(self._record_name())
            if got is not None:
                doc = got[1]
                self.next_id = max(1, int(doc.get("next_id", 1)))
                self.cuts = {int(k): {str(lun): int(t) for lun, t in v.items()} for k, v in doc.get("cuts", {}).items()}

    def _record_name(self) -> str:
        return f"group.{self.name}"

    def trigger(self, ctl, label, callback) -> int:
        """Owner thread: cut every member; ``callback(GroupCut)`` once all split, or ``callback(error)``.

        Returns the group TRIGGER's number. Raises QueueFullError (cutting nothing) when the ring has
        no room for every member's TRIGGER."""
        if ctl.ring_room() < len(self.luns):
            raise E.QueueFullError(f"group {self.name}: the request ring has no room for {len(self.luns)} "
                                   f"TRIGGERs; retry after the controller polls")
        gid = self.next_id
        self.next_id += 1
        token = GroupToken(label)
        results: list = [None] * len(self.luns)
        errors: list = []
        left = [len(self.luns)]
        held = [0.0]
        started = time.monotonic()

        def done(i):
            def cb(c):
                if c.error is not None:
                    errors.append(c.error)
                results[i] = c.trigger
                left[0] -= 1
                if not left[0]:
                    self._finish(ctl, gid, results, errors, held[0], callback)
            return cb

        for i, lun in enumerate(self.luns):
            ctl.submit(lun, Op.TRIGGER, label=label, callback=done(i), group=token)
        held[0] = time.monotonic() - started
        token.committed = True
        ctl.release(token)
        return gid

    def _finish(self, ctl, gid, results, errors, held, callback) -> None:
        if errors:
            self.failures += 1
            callback(E.ControllerError(f"group {self.name} TRIGGER {gid} failed: {errors[0]}")
                     if not isinstance(errors[0], E.ControllerError) else errors[0])
            return
        cut = GroupCut(gid, self.name, results, held)
        self.last = cut
        self.cuts[gid] = {r.lun: r.id for r in results}
        self._prune(ctl)
        self._persist()
        callback(cut)

    def _prune(self, ctl) -> None:
        held = {lun.name: {b.trigger_id for b in ctl.backups(lun)} for lun in self.luns}
        for gid in [g for g, members in self.cuts.items()
                    if not any(t in held.get(lun, ()) for lun, t in members.items())]:
            del self.cuts[gid]

    def _persist(self) -> None:
        if self.store is None:
            return
        self.store.write_json(self._record_name(), {"next_id": self.next_id, "cuts": {
            str(g): members for g, members in sorted(self.cuts.items())}})

    def member_backup(self, gid: int, lun_name: str) -> int | None:
        """The TRIGGER number on ``lun_name`` of group TRIGGER ``gid`` (None: no such cut or member)."""
        return self.cuts.get(gid, {}).get(lun_name)

    def status(self) -> dict:
        last = self.last
        return {"name": self.name, "luns": [lun.name for lun in self.luns], "triggers": self.next_id - 1,
                "failures": self.failures, "cuts": sorted(self.cuts),
                "last": None if last is None else {"id": last.id, "seq": {r.lun: r.seq for r in last.results},
                                                    "time": last.time, "held_us": round(last.held * 1e6, 1)}}
