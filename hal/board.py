# URL grammar:  board://BOARD_ID[?port=PORT][&rto=DURATION][&retries=N][&reconnect=DURATION][&window=N][&rate=N]
#   PORT is a device path or any pyserial URL; without it a real board is found by its USB VID/PID
#   (an emulated board needs the PATH given to `splitpoint emulate --link`). The rest default to the
#   board definition's link rate and window; the URL is parsed once, here.
"""The ``board://`` backend: a serial bridge board named by its definition (boards/<ID>/board.toml).

Owns only what a definition adds to ``serial://``: the link's baud and rate,
the window, finding a real board's data port by USB VID/PID, refusing a
board whose INFO names another id, and listing and reading the backups a
board with a pool cut (BACKUPS, BACKUP_READ). The session is the wire session
engine's, carried by SerialDevice; this module never writes to a backup.
"""
from __future__ import annotations

from splitpoint.hal import wire
from splitpoint.hal.contract import BadURLError, DeviceGoneError, HalError, check_io
from splitpoint.hal.wire.session import WireProtocolError
from splitpoint.hal.serial_dev import SerialDevice
from splitpoint.hal.url import LINK_OPTIONS, link_options, split_port_url

GRAMMAR = "board://BOARD_ID[?port=PORT][&rto=DURATION][&retries=N][&reconnect=DURATION][&window=N][&rate=N]"
OPTIONS = {"port"} | (LINK_OPTIONS - {"baud"})  # the baud is the definition's


class BoardBackupsUnsupportedError(HalError):
    """The board keeps no pool: its INFO does not announce the BACKUPS feature."""


class BoardNoSuchBackupError(HalError, LookupError):
    """The board holds no frozen backup cut by that trigger id (never cut, or recycled by rotation)."""


class BoardDevice(SerialDevice):
    scheme = "board"

    @classmethod
    def from_url(cls, url: str) -> "BoardDevice":
        from splitpoint.boards.schema import BoardDefinitionError, detect, load_board

        board_id, opts = split_port_url(url, "board", GRAMMAR, OPTIONS)
        try:
            board = load_board(board_id)
        except BoardDefinitionError as exc:
            raise BadURLError(f"{exc}; grammar: {GRAMMAR}") from None
        port = opts.pop("port", None)
        if not port:
            if board.emulated:
                raise BadURLError(f"emulated board {board_id!r} needs port=PATH (the --link of `splitpoint "
                                  f"emulate`); grammar: {GRAMMAR}")
            candidates = [a for a in detect(boards=[board]) if a.role in ("data", "unknown")]
            if not candidates:
                raise DeviceGoneError(f"no attached {board_id} found (USB {board.usb_id}); plug it in, check "
                                      f"`splitpoint boards`, or give port=DEVICE")
            port = candidates[0].device
        kwargs = link_options(opts, GRAMMAR, wire.MAX_WINDOW)
        kwargs.setdefault("rate", board.link_rate)
        kwargs.setdefault("window", board.window)
        dev = cls(port, baud=board.baud or 115200, expect_board=board_id, **kwargs)
        dev.board = board
        return dev

    def _backups_supported(self) -> None:
        self._live()
        if not self.info.features & wire.Feature.BACKUPS:
            raise BoardBackupsUnsupportedError(f"board {self.info.board_id} on {self.port_url} keeps no backups "
                                               f"(its INFO does not announce feature BACKUPS)")

    def backups(self) -> list:
        """The frozen backups the board holds, in its pool's member order (``wire.BackupEntry`` each)."""
        self._backups_supported()
        req = self.submit(wire.BackupList(), reply_bytes=8 * (13 + wire.MAX_LABEL))  # for the rto: a pool of a few
        self._wait_all([req])
        return wire.unpack_backups(req.reply.data)

    def read_backup(self, trigger_id: int, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the backup the board cut at TRIGGER ``trigger_id``."""
        self._backups_supported()
        check_io(offset, length, self.size, self.block_size)
        reqs = [self.submit(wire.BackupRead(trigger_id=trigger_id, offset=pos, length=n), reply_bytes=n + 32)
                for pos, n in self._chunks(offset, length)]
        try:
            self._wait_all(reqs)
        except WireProtocolError:
            if any(isinstance(r.reply, wire.Error) and r.reply.code == wire.ErrorCode.NO_BACKUP for r in reqs):
                raise BoardNoSuchBackupError(f"board {self.info.board_id} holds no backup of TRIGGER {trigger_id} "
                                             f"(never cut, or recycled by rotation)") from None
            raise
        return b"".join(r.reply.data for r in reqs)

    def describe(self):
        return f"board {self.info.board_id} on {self.port_url}: {self.size} bytes, block {self.block_size}"
