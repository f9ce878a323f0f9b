"""What a Python board answers BACKUPS and BACKUP_READ from, when its medium is a LUN of a Python controller.

Owns ``ControllerBackups``: the consistent frozen backups of one controller
LUN, listed in the pool's member order as the C firmware lists its regions,
each with the CRC32C of its bytes (computed once per backup: a frozen copy
never changes until it is recycled under a new trigger id). It never cuts,
pins or recycles anything; that is the controller's.
"""
from __future__ import annotations

import re

from splitpoint.hal import wire

_MEMBER = re.compile(r"^(.*)\[(\d+)\]$")


def _member_order(info):
    m = _MEMBER.match(info.member)
    return (m.group(1), int(m.group(2))) if m else (info.member, 0)


class ControllerBackups:
    """The backups of ``lun`` on controller ``ctl`` as ``BoardEngine(backups=...)`` takes them."""

    def __init__(self, ctl, lun):
        self.ctl, self.lun = ctl, lun
        self._digests: dict = {}  # (trigger id, cut time) -> CRC32C of the backup's bytes

    def entries(self) -> list:
        out = []
        for info in sorted(self.ctl.backups(self.lun), key=_member_order):
            key = (info.trigger_id, info.time)
            if key not in self._digests:
                size = self.lun.size
                self._digests[key] = wire.frame.crc32c(self.ctl.read_backup(self.lun, info.trigger_id, 0, size))
            out.append(wire.BackupEntry(info.trigger_id, self._digests[key], info.label or ""))
        return out

    def read(self, trigger_id: int, offset: int, length: int) -> bytes:
        """The bytes; LookupError (the controller's NoSuchBackupError) when no frozen backup has that id."""
        return self.ctl.read_backup(self.lun, trigger_id, offset, length)
