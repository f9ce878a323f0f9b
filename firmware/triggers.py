"""Trigger sources: the ways a host asks for a backup, all ending in one in-band TRIGGER.

Owns the TRIGGER event that travels down the mirror paths, and the source
abstraction the front ends plug into: the TRIGGER opcode (API, wire frames),
the special LUN (a write at offset 0 is a TRIGGER, its bytes the label), the
special path (a normal write followed in sequence by a TRIGGER), and a line
protocol for a separate serial control channel. A source only *queues* a
TRIGGER through ``Controller.submit``; the split happens in the controller
loop when the TRIGGER is dequeued.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace

from splitpoint.firmware.errors import ControllerError
from splitpoint.firmware.requests import LABEL_MAX, FLAG_FUA, Completion, Op


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A TRIGGER as the backup side sees it, after the split on the primary."""

    lun: str
    id: int          # TRIGGER number on the LUN, from 1
    seq: int         # its sequence number in the ring
    epoch: int       # the epoch the split closed (the cut holds every write of epochs <= this)
    label: str
    time: float      # wall time of the split
    exact: bool = True   # False when a hop upstream could not deliver it at exactly its point

    def inexact(self) -> "TriggerEvent":
        return replace(self, exact=False)


def special_lun_label(data) -> bytes:
    """The label a write to the special ``trigger`` LUN carries: its first 64 bytes, trailing NULs dropped."""
    return bytes(memoryview(data).cast("B")[:LABEL_MAX]).rstrip(b"\0")


class TriggerSource:
    """Something a host uses to ask for a backup of one LUN. It only queues."""

    kind = "opcode"

    def __init__(self, controller, lun: str):
        self.controller = controller
        self.lun = lun
        self.fired = 0

    def fire(self, label=None, callback=None) -> int:
        """Queue a TRIGGER; ``callback(Completion)`` runs once the split is done. Returns its seq."""
        self.fired += 1
        return self.controller.submit(self.lun, Op.TRIGGER, label=label, callback=callback)


class OpcodeTrigger(TriggerSource):
    """The TRIGGER opcode itself (Python API, wire-protocol TRIGGER frames)."""

    kind = "opcode"


class SpecialLunTrigger(TriggerSource):
    """The special LUN export ``trigger``: a write at offset 0 is a TRIGGER, its bytes (up to 64) the label."""

    kind = "special-lun"

    def write(self, offset: int, data, callback=None) -> int | None:
        """A host write to the special LUN; returns the TRIGGER's seq, or None when it was not at offset 0."""
        if offset != 0:
            return None
        return self.fire(special_lun_label(data), callback)


class SpecialPathTrigger(TriggerSource):
    """The special path ``<lun>.trigger``: a normal write, then a TRIGGER right behind it in sequence.

    ``callback`` gets one Completion once both are done: the write's error if
    it failed (the TRIGGER still cuts, after it), else the TRIGGER's.
    """

    kind = "special-path"

    def write(self, offset: int, data, fua: bool = False, label=None, callback=None) -> int:
        box: list[Completion] = []

        def on_write(c: Completion) -> None:
            box.append(c)

        def on_trigger(c: Completion) -> None:
            if callback is not None:
                callback(box[0] if box and box[0].error is not None else c)

        self.controller.submit(self.lun, Op.WRITE, offset=offset, data=data,
                               flags=FLAG_FUA if fua else 0, callback=on_write)
        return self.fire(label, on_trigger)


class ControlLine(TriggerSource):
    """The line protocol of the separate serial control channel.

    ``TRIGGER [label]`` -> ``OK <id> seq=<n>`` (sent after the split); ``STATUS`` -> one
    JSON line; ``PING`` -> ``PONG``; anything else -> ``ERR <reason>``.
    ``reply(line)`` is called with each answer (without the newline), on the
    controller's owner thread for TRIGGER and on the caller's thread otherwise.
    """

    kind = "serial"

    def handle(self, line: str, reply) -> None:
        text = line.strip()
        word, _, rest = text.partition(" ")
        word = word.upper()
        if word == "TRIGGER":
            label = rest.strip() or None
            if label is not None and len(label.encode("utf-8")) > LABEL_MAX:
                reply(f"ERR label is longer than {LABEL_MAX} bytes")
                return

            def done(c: Completion) -> None:
                if c.error is not None:
                    reply(f"ERR {c.error}")
                else:
                    reply(f"OK {c.trigger.id} seq={c.trigger.seq}")
            try:
                self.fire(label, done)
            except ControllerError as exc:
                reply(f"ERR {exc}")
        elif word == "STATUS" and not rest.strip():
            reply(json.dumps(self.controller.status(), separators=(",", ":")))
        elif word == "PING" and not rest.strip():
            reply("PONG")
        elif not text:
            reply("ERR empty command; commands: TRIGGER [label], STATUS, PING")
        else:
            reply(f"ERR unknown command {word!r}; commands: TRIGGER [label], STATUS, PING")
