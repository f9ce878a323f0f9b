"""Trigger sources: the ways a host asks for a backup, all ending in one in-band TRIGGER.

Owns every rule a trigger source follows, in one place:

- the label: at most ``LABEL_MAX`` bytes; a special-LUN write carries its bytes up to the
  first NUL (``special_lun_label``);
- the trigger export names and what they target (``trigger``, ``trigger.<name>``,
  ``<lun>.trigger``; ``trigger_export``);
- the control-line grammar (``parse_control_line``: one line in, one command object out)
  and the reply lines every control channel sends (``reply_*``);
- the TRIGGER event that travels down the mirror paths, and the sources the API offers.

A source only *queues* a TRIGGER through ``Controller.submit``; the split happens in the
controller loop when the TRIGGER is dequeued. Nothing here touches storage or NBD.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from splitpoint.firmware.errors import ControllerError
from splitpoint.firmware.requests import FLAG_FUA, Completion, Op

#: the longest TRIGGER label, in bytes (UTF-8 for text labels)
LABEL_MAX = 64
#: the longest control line; a longer one is answered with ERR and skipped
LINE_MAX = 1024


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


# ---------------------------------------------------------------- labels

def special_lun_label(data) -> bytes | None:
    """The label a write to a special LUN carries: its bytes up to the first NUL, at most LABEL_MAX.

    The bytes go to the controller as they are (reports show bytes that are not UTF-8 escaped),
    so a client writing any pattern still cuts a backup. None when the label is empty.
    """
    raw = bytes(memoryview(data).cast("B")[:LABEL_MAX]).split(b"\0", 1)[0]
    return raw or None


def label_error(label: str) -> str | None:
    """Why ``label`` cannot be a TRIGGER label, or None when it can."""
    size = len(label.encode("utf-8"))
    if size > LABEL_MAX:
        return f"label is {size} bytes; at most {LABEL_MAX}"
    return None


# ---------------------------------------------------------------- trigger exports

SPECIAL_LUN = "special-lun"    # a write at offset 0 is a TRIGGER, its bytes the label
SPECIAL_PATH = "special-path"  # a LUN's blocks; every write is followed in sequence by a TRIGGER

#: the special LUN of the first LUN
TRIGGER_EXPORT = "trigger"
_SPECIAL_LUN_PREFIX = TRIGGER_EXPORT + "."
_SPECIAL_PATH_SUFFIX = "." + TRIGGER_EXPORT


@dataclass(frozen=True, slots=True)
class TriggerTarget:
    """What a trigger export name asks for: its kind, and the LUN or group (None: the first LUN)."""

    kind: str
    name: str | None


def trigger_export(name: str) -> TriggerTarget | None:
    """The trigger target an export name names, or None when it is not a trigger export."""
    if name == TRIGGER_EXPORT:
        return TriggerTarget(SPECIAL_LUN, None)
    if name.startswith(_SPECIAL_LUN_PREFIX) and len(name) > len(_SPECIAL_LUN_PREFIX):
        return TriggerTarget(SPECIAL_LUN, name[len(_SPECIAL_LUN_PREFIX):])
    if name.endswith(_SPECIAL_PATH_SUFFIX) and len(name) > len(_SPECIAL_PATH_SUFFIX):
        return TriggerTarget(SPECIAL_PATH, name[: -len(_SPECIAL_PATH_SUFFIX)])
    return None


def special_lun_export(name: str | None = None) -> str:
    """The special LUN export of LUN or group ``name`` (None: ``trigger``, the first LUN's)."""
    return TRIGGER_EXPORT if name is None else _SPECIAL_LUN_PREFIX + name


def special_path_export(lun: str) -> str:
    """The special path export of ``lun``."""
    return lun + _SPECIAL_PATH_SUFFIX


# ---------------------------------------------------------------- the control-line grammar

#: the grammar, as every ERR for an unknown command lists it
COMMANDS = ("TRIGGER [ON <lun|group>] [label], STATUS, VERIFY [name] [id], PING, "
            "PIN <backup>, UNPIN <backup>, RESTORE <backup> [ON <lun>]")


class ControlSyntaxError(ValueError):
    """A control line that is not a command of the grammar; the message is the ERR reason."""


@dataclass(frozen=True, slots=True)
class TriggerCommand:
    """``TRIGGER [ON <lun|group>] [label]``: target None is the first LUN."""

    target: str | None
    label: str | None
    verb = "TRIGGER"


@dataclass(frozen=True, slots=True)
class StatusCommand:
    """``STATUS``: one line of JSON."""

    verb = "STATUS"


@dataclass(frozen=True, slots=True)
class VerifyCommand:
    """``VERIFY [name] [id]``: recompute the digests of a LUN's backups (or of the one named)."""

    name: str | None
    trigger_id: int | None
    verb = "VERIFY"


@dataclass(frozen=True, slots=True)
class PingCommand:
    """``PING`` -> ``PONG``."""

    verb = "PING"


@dataclass(frozen=True, slots=True)
class PinCommand:
    """``PIN <backup>``: rotation never recycles it."""

    backup: str
    verb = "PIN"


@dataclass(frozen=True, slots=True)
class UnpinCommand:
    """``UNPIN <backup>``: rotation may recycle it again."""

    backup: str
    verb = "UNPIN"


@dataclass(frozen=True, slots=True)
class RestoreCommand:
    """``RESTORE <backup> [ON <lun>]``: the LUN becomes the backup's bytes, in sequence."""

    backup: str
    lun: str | None
    verb = "RESTORE"


_ID = re.compile(r"[0-9]+")


def _no_argument(verb: str, rest: str):
    if rest:
        raise ControlSyntaxError(f"{verb} takes no argument")


def _on(verb: str, words: list[str], what: str) -> tuple[str | None, list[str]]:
    """(the name after a leading ``ON``, the words after it); ON is matched in capitals only,
    so a label that starts with the word "on" stays a label."""
    if not words or words[0] != "ON":
        return None, words
    if len(words) < 2:
        raise ControlSyntaxError(f"{verb} ON needs a {what} name")
    return words[1], words[2:]


def _trigger(rest: str) -> TriggerCommand:
    target = None
    if rest == "ON" or rest.startswith("ON "):
        target, words = _on("TRIGGER", rest.split(None, 2), "LUN or group")
        rest = words[0] if words else ""
    label = rest.strip() or None
    if label is not None:
        reason = label_error(label)
        if reason:
            raise ControlSyntaxError(reason)
    return TriggerCommand(target, label)


def _verify(rest: str) -> VerifyCommand:
    args = rest.split()
    name = None
    if args and not _ID.fullmatch(args[0]):
        name, args = args[0], args[1:]
    if len(args) > 1 or (args and not _ID.fullmatch(args[0])):
        raise ControlSyntaxError("usage: VERIFY [name] [trigger id]")
    return VerifyCommand(name, int(args[0]) if args else None)


def _backup(verb: str, rest: str) -> tuple[str, list[str]]:
    words = rest.split()
    if not words:
        raise ControlSyntaxError(f"{verb} needs a backup name (for example lun0.t1)")
    return words[0], words[1:]


def _pin(verb: str, rest: str):
    backup, extra = _backup(verb, rest)
    if extra:
        raise ControlSyntaxError(f"usage: {verb} <backup>")
    return (PinCommand if verb == "PIN" else UnpinCommand)(backup)


def _restore(rest: str) -> RestoreCommand:
    backup, words = _backup("RESTORE", rest)
    lun, extra = _on("RESTORE", words, "LUN")
    if extra or (words and lun is None):
        raise ControlSyntaxError("usage: RESTORE <backup> [ON <lun>]")
    return RestoreCommand(backup, lun)


_PARSERS = {
    "TRIGGER": _trigger,
    "STATUS": lambda rest: (_no_argument("STATUS", rest), StatusCommand())[1],
    "VERIFY": _verify,
    "PING": lambda rest: (_no_argument("PING", rest), PingCommand())[1],
    "PIN": lambda rest: _pin("PIN", rest),
    "UNPIN": lambda rest: _pin("UNPIN", rest),
    "RESTORE": _restore,
}


def parse_control_line(line: str):
    """The command on one control line (its line end already cut), or None for a blank line.

    Verbs are case-insensitive; a label is the rest of the line, trimmed. Raises
    ControlSyntaxError, whose message is the reason an ``ERR`` line gives.
    """
    text = line.strip()
    if not text:
        return None   # a CR LF line end reads as a blank line: answering it would misalign replies
    verb, _, rest = text.partition(" ")
    parse = _PARSERS.get(verb.upper())
    if parse is None:
        raise ControlSyntaxError(f"unknown command {verb[:32]!r}; commands: {COMMANDS}")
    return parse(rest.strip())


def trigger_line(target: str | None = None, label: str | None = None) -> str:
    """The control line that asks for a TRIGGER of ``target`` (None: the first LUN) with ``label``.

    Raises ControlSyntaxError for what the grammar cannot carry: a label of more than one line
    or over LABEL_MAX, and, without a target, a label whose first word is ON.
    """
    words = ["TRIGGER"]
    if target is not None:
        if not target or len(target.split()) != 1:
            raise ControlSyntaxError(f"a LUN or group name is one word, got {target!r}")
        words += ["ON", target]
    if label and ("\n" in label or "\r" in label):
        raise ControlSyntaxError("a label is one line")
    label = label.strip() if label else ""
    if label:
        reason = label_error(label)
        if reason:
            raise ControlSyntaxError(reason)
        if target is None and label.split(None, 1)[0] == "ON":
            raise ControlSyntaxError("a label for the first LUN cannot start with the word ON; name the LUN")
        words.append(label)
    return " ".join(words)


# ---------------------------------------------------------------- reply lines

def reply_error(reason) -> str:
    """``ERR <reason>`` on one line."""
    return "ERR " + " ".join(str(reason).split())


def reply_unsupported(command, who: str = "this controller") -> str:
    """The answer to a command of the grammar that ``who`` does not carry out."""
    return reply_error(f"{command.verb} is not supported by {who}")


def reply_no_target(name: str, luns, groups=()) -> str:
    """The answer when ``ON <name>`` (or VERIFY's name) names no LUN or group of this controller."""
    listed = f"LUNs: {', '.join(luns)}" + (f"; groups: {', '.join(groups)}" if groups else "")
    return reply_error(f"no LUN or group named {name!r}; {listed}")


def reply_triggered(trigger_id: int, seq: int, warning: str | None = None) -> str:
    """``OK <id> seq=<n>``: sent once the TRIGGER has split the mirror; ``warning=...`` follows when
    the cut left the LUN without a consistent backup until it completes."""
    return f"OK {trigger_id} seq={seq}" + (f" warning={warning}" if warning else "")


def reply_pinned(members) -> str:
    """The answer to PIN or UNPIN once ``members`` (the pool members holding the backup) are set: ``OK``."""
    return "OK"


def reply_group_triggered(trigger_id: int, group: str, seqs: str) -> str:
    """``OK <id> group=<name> seq=<lun>:<n>,<lun>:<n>...``: every LUN of the group has split."""
    return f"OK {trigger_id} group={group} seq={seqs}"


def group_backup_export(group: str, trigger_id: int, lun: str) -> str:
    """The export of LUN ``lun``'s backup cut by the group's TRIGGER ``trigger_id``."""
    return f"{group}.t{trigger_id}.{lun}"


def reply_restored(lun: str, seq: int) -> str:
    """``OK restore <lun> seq=<n>``: sent once the LUN holds the backup's bytes at that point of its stream."""
    return f"OK restore {lun} seq={seq}"


def restore_lun_name(command: RestoreCommand) -> str:
    """The LUN a RESTORE writes: the one after ON, else the backup's own (``lun0`` of ``lun0.t3``)."""
    return command.lun if command.lun is not None else command.backup.rpartition(".")[0]


def reply_json(doc) -> str:
    """A STATUS or VERIFY answer: one line of compact JSON."""
    return json.dumps(doc, separators=(",", ":"), default=str)


def reply_verified(results) -> str:
    """A VERIFY answer: one JSON object per backup checked."""
    return reply_json([{"trigger_id": r.trigger_id, "member": r.member, "ok": r.ok,
                        "expected": None if r.expected is None else f"{r.expected:016x}",
                        "actual": None if r.actual is None else f"{r.actual:016x}",
                        "bad_regions": r.bad_regions, "note": r.note, "pending": r.pending}
                       for r in results])


# ---------------------------------------------------------------- sources (Python API)

class TriggerSource:
    """Something a host uses to ask for a backup of one LUN. It only queues."""

    kind = "opcode"

    def __init__(self, controller, lun: str):
        self.controller = controller
        self.lun = lun
        self.fired = 0

    def fire(self, label=None, callback=None, lun=None) -> int:
        """Queue a TRIGGER; ``callback(Completion)`` runs once the split is done. Returns its seq."""
        self.fired += 1
        return self.controller.submit(self.lun if lun is None else lun, Op.TRIGGER, label=label,
                                      callback=callback)


class OpcodeTrigger(TriggerSource):
    """The TRIGGER opcode itself (Python API, wire-protocol TRIGGER frames)."""

    kind = "opcode"


class SpecialLunTrigger(TriggerSource):
    """The special LUN export ``trigger``: a write at offset 0 is a TRIGGER (see special_lun_label)."""

    kind = SPECIAL_LUN

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

    kind = SPECIAL_PATH

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
    """The control-line grammar over a Controller, for callers that bring their own line.

    ``reply(line)`` is called with each answer (without the newline), on the controller's
    owner thread for TRIGGER and on the caller's thread otherwise (PIN and UNPIN run only
    where the controller has no other owner thread).
    """

    kind = "serial"

    def handle(self, line: str, reply) -> None:
        try:
            command = parse_control_line(line)
        except ControlSyntaxError as exc:
            reply(reply_error(exc))
            return
        if command is None:
            return
        if isinstance(command, PingCommand):
            reply("PONG")
        elif isinstance(command, StatusCommand):
            reply(reply_json(self.controller.status()))
        elif isinstance(command, TriggerCommand):
            self._trigger(command, reply)
        elif isinstance(command, VerifyCommand):
            self._verify(command, reply)
        elif isinstance(command, RestoreCommand):
            self._restore(command, reply)
        elif isinstance(command, (PinCommand, UnpinCommand)):
            set_pin = self.controller.pin if isinstance(command, PinCommand) else self.controller.unpin
            try:
                reply(reply_pinned(set_pin(command.backup)))
            except ControllerError as exc:
                reply(reply_error(exc))
        else:
            reply(reply_unsupported(command))

    def _lun(self, name: str | None, reply) -> str | None:
        if name is None:
            return self.lun
        if name in self.controller.luns:
            return name
        reply(reply_no_target(name, self.controller.luns))
        return None

    def _trigger(self, command: TriggerCommand, reply) -> None:
        lun = self._lun(command.target, reply)
        if lun is None:
            return

        def done(c: Completion) -> None:
            if c.error is not None:
                reply(reply_error(f"trigger failed: {c.error}"))
            else:
                reply(reply_triggered(c.trigger.id, c.trigger.seq, c.trigger.warning))
        try:
            self.fire(command.label, done, lun)
        except ControllerError as exc:
            reply(reply_error(exc))

    def _restore(self, command: RestoreCommand, reply) -> None:
        lun = self._lun(restore_lun_name(command), reply)
        if lun is None:
            return

        def done(c: Completion) -> None:
            if c.error is not None:
                reply(reply_error(f"restore failed: {c.error}"))
            else:
                reply(reply_restored(c.data.lun, c.data.seq))
        try:
            self.controller.submit(lun, Op.RESTORE, label=command.backup, callback=done)
        except ControllerError as exc:
            reply(reply_error(exc))

    def _verify(self, command: VerifyCommand, reply) -> None:
        lun = self._lun(command.name, reply)
        if lun is None:
            return
        try:
            results = self.controller.verify(lun, command.trigger_id)
        except ControllerError as exc:
            reply(reply_error(f"verify failed: {exc}"))
            return
        reply(reply_verified(results))
