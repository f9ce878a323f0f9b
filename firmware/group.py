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
