"""The NBD exports a controller offers, and what each one does with a request.

Exports, for every LUN ``<lun>`` of the controller (``lun0`` on the default):

- ``<lun>``: the primary LUN, read-write. The first LUN is also the default export "".
- ``<lun>.trigger``: the special path, the same blocks as ``<lun>``; every WRITE, TRIM or
  WRITE_ZEROES through it is queued and then followed in sequence by a TRIGGER, and is
  answered once that TRIGGER has split the mirror.
- ``<lun>.latest``: the newest consistent frozen backup, read-only, bound when a client connects.
- ``<lun>.t<id>``: the backup cut by TRIGGER number ``<id>``, read-only, listed while the pool
  keeps it and gone once it is recycled.
- changed-block maps (NBD ``qemu:dirty-bitmap:<lun>.t<id>``): on ``<lun>``, the extents changed
  since backup t<id> was cut (``qemu:dirty-bitmap:<lun>.latest``: since the newest backup); on a backup ``<lun>.t<n>``, those changed between t<id> and t<n>
  (``firmware/changes.py``).
- ``trigger`` and ``trigger.<lun>``: the special LUN of the first LUN (of ``<lun>``): a WRITE at
  offset 0 is a TRIGGER whose label the written bytes carry (``triggers.special_lun_label``);
  reads return zeros; other writes are ignored.
- For every configured group ``<group>`` (``[[group]]``): ``trigger.<group>``, whose write at offset 0
  cuts every LUN of the group at one point, and ``<group>.t<id>.<lun>``: LUN ``<lun>``'s backup cut
  by the group's TRIGGER number ``<id>`` (the same backup as ``<lun>.t<n>``), while its pool keeps it.

Which names are trigger exports, and the label rules, are ``firmware/triggers.py``'s.

An export only queues requests through the front end (``FrontEnd.submit``) or asks the controller
questions its contract answers (backups, allocation). It never touches the HAL or controller state.
"""
from __future__ import annotations

import datetime
import re

from splitpoint.firmware import triggers
from splitpoint.firmware.requests import STATE_ZERO, Op

#: size of the special LUN; large enough for any client's first write
TRIGGER_LUN_SIZE = 1 << 20
TRIGGER_LUN_BLOCK = 512
#: preferred block size advertised for every export
PREFERRED_BLOCK = 4096

_GROUP_BACKUP_NAME = re.compile(r"^(?P<group>[A-Za-z][A-Za-z0-9]*)\.t(?P<id>[1-9][0-9]*)\.(?P<lun>[A-Za-z][A-Za-z0-9]*)$")
_BACKUP_NAME = re.compile(r"^(?P<lun>[A-Za-z0-9.]+?)\.(?:t(?P<id>[1-9][0-9]*)|(?P<latest>latest))$")


def _when(value) -> str:
    """A backup's time as UTC ISO-8601 (the controller gives a datetime or epoch seconds)."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    else:
        moment = datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_backup(lun_name: str, info, links=None) -> str:
    """A backup's NBD description; one cut at a device link's TRIGGER names its origin (``from <device> t<id>``)."""
    label = f"'{info.label}'" if info.label else "(no label)"
    origin = None if links is None else links.origin_of(lun_name, info.trigger_id)
    return (f"{lun_name} backup t{info.trigger_id}: label {label}, seq {info.seq}, "
            f"time {_when(info.time)}" + (f", {origin}" if origin else "") + ", read-only")


class Export:
    """What a connection needs to know about an export, and its request handlers.

    Handlers are called only after the NBD edge validated the request (flags, bounds, alignment)
    and translated it: ``flags`` are the controller's request flags (``firmware/requests.py``).
    Each one eventually calls exactly one ``conn.reply_*`` for the cookie.
    """

    name = ""
    description = ""
    size = 0
    block_size = 512
    read_only = False
    #: whether base:allocation is meaningful (else every extent is reported allocated)
    allocation = False

    @property
    def preferred_block(self) -> int:
        """The block size a client should use: at least PREFERRED_BLOCK."""
        return max(PREFERRED_BLOCK, self.block_size)

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """Extents as (length, controller allocation states); the default: all allocated."""
        return [(length, 0)]

    def bitmaps(self) -> list[str]:
        """The backups a changed-block map of this export can start from (none on special exports)."""
        return []

    def changed_status(self, since: str, offset: int, length: int) -> list[tuple[int, bool]]:
        """Extents as (length, changed since backup ``since``); see ``firmware/changes.py``."""
        raise ValueError(f"export {self.name!r} has no changed-block maps")


class LunExport(Export):
    """The primary LUN: every request goes through the controller's sequenced queue."""

    allocation = True

    def __init__(self, frontend, lun, name: str | None = None, description: str | None = None):
        self.fe = frontend
        self.lun = lun
        #: READ and WRITE of this export may go straight to the controller (connection fast path)
        self.fast_lun = lun
        self.lun_name = lun.name
        self.name = name or lun.name
        self.size = lun.size
        self.block_size = lun.block_size
        self.read_only = bool(getattr(lun, "read_only", False))
        links = frontend.device_links
        fed = links is not None and links.feeds(lun.name)
        if fed:   # another controller streams this LUN: a host's write would fork it from that stream
            self.read_only = True
            self.fast_lun = None
        self.description = description or (f"{lun.name}: primary LUN, {lun.size} bytes, block {lun.block_size}"
                                           + (", fed by a device link, read-only" if fed else
                                              ", read-only" if self.read_only else ""))

    def read(self, conn, cookie, offset, length, flags):
        self.fe.submit(conn, self.lun, Op.READ, offset, length, None, 0, None, conn.read_callback(cookie, offset))


    def write(self, conn, cookie, offset, data, flags):
        self.fe.submit(conn, self.lun, Op.WRITE, offset, len(data), data, flags, None,
                       conn.ok_callback(cookie))

    def flush(self, conn, cookie, flags):
        self.fe.submit(conn, self.lun, Op.FLUSH, 0, 0, None, 0, None, conn.ok_callback(cookie))

    def trim(self, conn, cookie, offset, length, flags):
        self.fe.submit(conn, self.lun, Op.TRIM, offset, length, None, flags, None,
                       conn.ok_callback(cookie))

    def write_zeroes(self, conn, cookie, offset, length, flags):
        self.fe.submit(conn, self.lun, Op.WRITE_ZEROES, offset, length, None, flags, None,
                       conn.ok_callback(cookie))

    def cache(self, conn, cookie, offset, length, flags):
        self.fe.submit(conn, self.lun, Op.CACHE, offset, length, None, 0, None, conn.ok_callback(cookie))

    def block_status(self, offset, length):
        out = []
        for _off, ext_len, ext_flags in self.fe.ctl.allocation(self.lun, offset, length):
            if out and out[-1][1] == ext_flags:
                out[-1] = (out[-1][0] + ext_len, ext_flags)
            else:
                out.append((ext_len, ext_flags))
        return out or [(length, 0)]


    def bitmaps(self):
        return self.fe.ctl.bitmap_names(self.lun, latest=True)   # .latest: changed since the newest backup

    def changed_status(self, since, offset, length):
        return [(n, changed) for _o, n, changed in self.fe.ctl.changed_since(since, None, offset, length)]


class _ReplyAfterTrigger:
    """Joins a write and the TRIGGER queued right behind it: the reply waits for both."""

    __slots__ = ("reply", "error", "left")

    def __init__(self, reply):
        self.reply = reply
        self.error = None
        self.left = 2

    def __call__(self, completion):
        if completion.error is not None and self.error is None:
            self.error = completion
        self.left -= 1
        if self.left == 0:
            self.reply(self.error or completion)


class TriggerPathExport(LunExport):
    """The special path: a LUN's blocks, each write followed in sequence by a TRIGGER."""

    def __init__(self, frontend, lun):
        super().__init__(frontend, lun, name=triggers.special_path_export(lun.name),
                         description=(f"{lun.name} special path: the blocks of {lun.name}; every write "
                                      f"is followed in sequence by a TRIGGER"))
        self.fast_lun = None   # every write needs its TRIGGER behind it

    def _then_trigger(self, conn, cookie, op, offset, length, data, flags):
        join = _ReplyAfterTrigger(conn.ok_callback(cookie))
        self.fe.submit(conn, self.lun, op, offset, length, data, flags, None, join)
        self.fe.submit(conn, self.lun, Op.TRIGGER, 0, 0, None, 0, None, join)

    def write(self, conn, cookie, offset, data, flags):
        self._then_trigger(conn, cookie, Op.WRITE, offset, len(data), data, flags)

    def trim(self, conn, cookie, offset, length, flags):
        self._then_trigger(conn, cookie, Op.TRIM, offset, length, None, flags)

    def write_zeroes(self, conn, cookie, offset, length, flags):
        self._then_trigger(conn, cookie, Op.WRITE_ZEROES, offset, length, None, flags)


class TriggerLunExport(Export):
    """The special LUN: a write at offset 0 is a TRIGGER of ``lun``, its bytes the label."""

    size = TRIGGER_LUN_SIZE
    block_size = TRIGGER_LUN_BLOCK

    def __init__(self, frontend, lun, name: str = triggers.TRIGGER_EXPORT):
        self.fe = frontend
        self.lun = lun
        self.name = name
        self.description = (f"special LUN: a write at offset 0 is a TRIGGER of {lun.name}, "
                            f"its bytes up to the first NUL (at most {triggers.LABEL_MAX}) the label")

    def read(self, conn, cookie, offset, length, flags):
        conn.reply_data(cookie, offset, bytes(length))

    def write(self, conn, cookie, offset, data, flags):
        if offset != 0:
            conn.reply_ok(cookie)
            return
        self.fe.submit(conn, self.lun, Op.TRIGGER, 0, 0, None, 0, triggers.special_lun_label(data),
                       conn.ok_callback(cookie))

    def flush(self, conn, cookie, flags):
        conn.reply_ok(cookie)

    def trim(self, conn, cookie, offset, length, flags):
        conn.reply_ok(cookie)

    write_zeroes = trim

    def cache(self, conn, cookie, offset, length, flags):
        conn.reply_ok(cookie)

    def block_status(self, offset, length):
        return [(length, STATE_ZERO)]


class GroupTriggerExport(TriggerLunExport):
    """The special LUN of a consistency group: a write at offset 0 cuts every LUN of ``group`` at one point."""

    def __init__(self, frontend, group, name: str):
        self.fe = frontend
        self.group = group
        self.lun = group.luns[0]
        self.name = name
        self.description = (f"special LUN: a write at offset 0 is a TRIGGER of group {group.name} "
                            f"({', '.join(lun.name for lun in group.luns)}), its bytes up to the first NUL "
                            f"(at most {triggers.LABEL_MAX}) the label")

    def write(self, conn, cookie, offset, data, flags):
        if offset != 0:
            conn.reply_ok(cookie)
            return

        def done(cut):
            if isinstance(cut, Exception):
                conn.reply_exception(cookie, cut, f"group {self.group.name} TRIGGER failed: {cut}")
            else:
                conn.reply_ok(cookie)
        self.fe.trigger_group(self.group, triggers.special_lun_label(data), done)


class BackupExport(Export):
    """A frozen point-in-time backup, read-only; reads fail once the pool recycles it."""

    read_only = True

    def __init__(self, frontend, lun, info, name: str | None = None):
        self.fe = frontend
        self.lun = lun
        self.trigger_id = info.trigger_id
        self.name = name or f"{lun.name}.t{info.trigger_id}"
        self.size = lun.size
        self.block_size = lun.block_size
        self.description = describe_backup(lun.name, info, frontend.device_links)
        if name and name.endswith(".latest"):
            self.description = f"newest consistent backup of {lun.name}: " + self.description

    def bitmaps(self):
        return self.fe.ctl.bitmap_names(self.lun, except_id=self.trigger_id)

    def changed_status(self, since, offset, length):
        return [(n, changed) for _o, n, changed in
                self.fe.ctl.changed_since(since, f"{self.lun.name}.t{self.trigger_id}", offset, length)]

    def read(self, conn, cookie, offset, length, flags):
        try:
            data = self.fe.ctl.read_backup(self.lun, self.trigger_id, offset, length)
        except Exception as exc:  # NoSuchBackupError and HAL errors: answered, never raised into the loop
            conn.reply_exception(cookie, exc, f"backup t{self.trigger_id} of {self.lun.name}: {exc}")
            return
        conn.reply_data(cookie, offset, data)

    def flush(self, conn, cookie, flags):
        conn.reply_ok(cookie)

    def cache(self, conn, cookie, offset, length, flags):
        conn.reply_ok(cookie)


class ExportTable:
    """Resolves export names against the controller's LUNs and its current backups."""

    def __init__(self, frontend):
        self.fe = frontend
        self.ctl = frontend.ctl
        self.luns = list(self.ctl.luns.values())
        if not self.luns:
            raise ValueError("the controller has no LUN to export")
        self.default_lun = self.luns[0]

    def _lun(self, name: str):
        return self.ctl.luns.get(name)

    def listing(self) -> list[tuple[str, str]]:
        """(name, description) of every export a client can open now, for NBD_OPT_LIST."""
        out = []
        held = {}   # LUN name -> {TRIGGER id: its backup}, for the group exports below
        for lun in self.luns:
            out.append((lun.name, LunExport(self.fe, lun).description))
            path = TriggerPathExport(self.fe, lun)
            out.append((path.name, path.description))
            if lun is not self.default_lun:   # the first LUN's special LUN is listed once, as "trigger"
                special = TriggerLunExport(self.fe, lun, triggers.special_lun_export(lun.name))
                out.append((special.name, special.description))
            backups = self.ctl.backups(lun)
            held[lun.name] = {info.trigger_id: info for info in backups}
            if backups:
                newest = backups[0]   # Controller.backups: newest cut first
                out.append((f"{lun.name}.latest", BackupExport(self.fe, lun, newest, f"{lun.name}.latest").description))
            for info in sorted(backups, key=lambda b: b.trigger_id):
                out.append((f"{lun.name}.t{info.trigger_id}", describe_backup(lun.name, info, self.fe.device_links)))
        for group in self.ctl.groups.values():
            special = GroupTriggerExport(self.fe, group, triggers.special_lun_export(group.name))
            out.append((special.name, special.description))
            for gid in sorted(group.cuts):
                for lun in group.luns:
                    info = held[lun.name].get(group.member_backup(gid, lun.name))
                    if info is not None:
                        out.append((triggers.group_backup_export(group.name, gid, lun.name),
                                    f"group {group.name} t{gid}: "
                                    + describe_backup(lun.name, info, self.fe.device_links)))
        out.append((triggers.TRIGGER_EXPORT, TriggerLunExport(self.fe, self.default_lun).description))
        return out

    def _group_backup(self, group, gid: int, lun):
        """The backup of ``lun`` that group TRIGGER ``gid`` cut, while the pool still holds it (else None)."""
        wanted = group.member_backup(gid, lun.name)
        if wanted is None:
            return None
        for info in self.ctl.backups(lun):
            if info.trigger_id == wanted:
                return info
        return None

    def _trigger_export(self, name: str) -> Export | None:
        target = triggers.trigger_export(name)
        if target is None:
            return None
        if target.kind == triggers.SPECIAL_LUN and target.name in self.ctl.groups:
            return GroupTriggerExport(self.fe, self.ctl.groups[target.name], name)
        lun = self.default_lun if target.name is None else self._lun(target.name)
        if lun is None:
            return None
        if target.kind == triggers.SPECIAL_LUN:
            return TriggerLunExport(self.fe, lun, name)
        return TriggerPathExport(self.fe, lun)

    def open(self, name: str) -> Export | None:
        """The export called ``name`` ("" is the default), or None when there is none."""
        if name == "":
            return LunExport(self.fe, self.default_lun)
        if name == triggers.TRIGGER_EXPORT:   # before the LUNs: a LUN called "trigger" keeps <lun>.t<id> only
            return self._trigger_export(name)
        lun = self._lun(name)
        if lun is not None:
            return LunExport(self.fe, lun)
        special = self._trigger_export(name)
        if special is not None:
            return special
        g = _GROUP_BACKUP_NAME.match(name)
        if g is not None and g["group"] in self.ctl.groups:
            group = self.ctl.groups[g["group"]]
            lun = self._lun(g["lun"])
            info = None if lun is None or lun not in group.luns else self._group_backup(group, int(g["id"]), lun)
            return None if info is None else BackupExport(self.fe, lun, info, name)
        m = _BACKUP_NAME.match(name)
        if m is None:
            return None
        lun = self._lun(m["lun"])
        if lun is None:
            return None
        backups = self.ctl.backups(lun)
        if m["latest"]:
            if not backups:
                return None
            return BackupExport(self.fe, lun, backups[0], name)   # newest cut first
        wanted = int(m["id"])
        for info in backups:
            if info.trigger_id == wanted:
                return BackupExport(self.fe, lun, info)
        return None
