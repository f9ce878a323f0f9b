"""The board's side of a session over its medium, transport-free: bytes or frames in, reply messages out.

Owns ``BoardEngine``: what each request does to the medium (READ, WRITE,
FLUSH, TRIM, zeroes, TRIGGER; BACKUPS and BACKUP_READ when it is given a
source of backups), the board's INFO, and the mapping of the medium's errors
to the protocol's codes. The session rules (handshake, seq
order within the window, the reply cache, NAKs) are the shared engine's,
``splitpoint.hal.wire.session.DeviceSession``. It never touches a pty, a
thread or a clock, and never decides what a TRIGGER means: it hands each one,
in seq order, to the callback it is given.
"""
from __future__ import annotations

from splitpoint.hal import wire
from splitpoint.hal.contract import (BlockDevice, HalError, check_io, MisalignedError, OutOfRangeError, ReadOnlyError,
                                     ZeroLengthError)
from splitpoint.hal.wire import ErrorCode, Feature, Flag, MsgType
from splitpoint.hal.wire.session import DeviceSession

_HAL_ERRORS = ((OutOfRangeError, ErrorCode.OUT_OF_RANGE), (MisalignedError, ErrorCode.MISALIGNED),
               (ZeroLengthError, ErrorCode.MISALIGNED), (ReadOnlyError, ErrorCode.READ_ONLY))


class BoardEngine:
    """A bridge board's firmware over ``device``: the shared DeviceSession, executing on the medium.

    ``feed(bytes)`` (or ``on_frame``/``on_rejected_frame`` for frames already
    decoded) returns the reply messages to send, in order. ``backups``, when
    given, is what BACKUPS and BACKUP_READ answer from: ``entries()`` (a list of
    ``wire.BackupEntry``) and ``read(trigger_id, offset, length)`` (LookupError
    for an id that names no frozen backup); without it the board announces no
    BACKUPS feature and answers them UNKNOWN_TYPE, as a board without a pool does.
    """

    def __init__(self, device: BlockDevice, board_id: str, window: int = 8, max_transfer: int = 16384,
                 features: int = 0, firmware: int = 0, on_trigger=None, backups=None):
        self.device = device
        self.board_id = board_id
        self.max_transfer = max_transfer
        self.backups = backups
        self.features = (features | (Feature.READ_ONLY if device.read_only else 0)
                         | (Feature.BACKUPS if backups is not None else 0))
        self.firmware = firmware
        self.on_trigger = on_trigger  # fn(id, label, seq), called in seq order
        self.protocol = DeviceSession(window, self._run, self._describe, max_transfer + 64)
        self.stats = self.protocol.stats
        self.decoder = self.protocol.decoder

    # the session's state, as a board's status and tests read it
    window = property(lambda self: self.protocol.window)
    expected = property(lambda self: self.protocol.expected, doc="The next seq the board executes.")
    buffered = property(lambda self: self.protocol.buffered)
    replies = property(lambda self: self.protocol.replies)

    @property
    def session(self) -> int | None:
        """The session the board holds (None: none yet). Setting None models a power loss."""
        return self.protocol.session

    @session.setter
    def session(self, value: int | None) -> None:
        self.protocol.session = value

    def _describe(self) -> wire.BoardInfo:
        return wire.BoardInfo(self.device.size, self.device.block_size, self.max_transfer, self.window,
                              self.features, self.firmware, board_id=self.board_id)

    def info(self) -> wire.BoardInfo:
        return self.protocol.info()

    def feed(self, data: bytes) -> list:
        """Reply messages for bytes received from the host."""
        return self.protocol.feed(data)

    def on_frame(self, frm: tuple) -> list:
        """Replies to send for one decoded frame (version, type, flags, seq, payload)."""
        return self.protocol.on_frame(frm)

    def on_rejected_frame(self) -> list:
        """A frame failed its COBS/length/CRC check: ask for a resend of what is missing."""
        return self.protocol.on_rejected_frame()

    def nak(self) -> wire.Nak:
        return self.protocol.nak()

    def _run(self, msg) -> wire.Message:
        """Execute one well-formed request on the medium (the session calls it in seq order)."""
        dev = self.device
        try:
            if isinstance(msg, wire.Read):
                if msg.length > self.max_transfer:
                    return self._too_large(msg, msg.length)
                return wire.Ack(seq=msg.seq, of=MsgType.READ, data=dev.read(msg.offset, msg.length))
            if isinstance(msg, wire.Write):
                if len(msg.data) > self.max_transfer:
                    return self._too_large(msg, len(msg.data))
                dev.write(msg.offset, msg.data, fua=bool(msg.flags & Flag.FUA))
            elif isinstance(msg, wire.Flush):
                dev.flush()
            elif isinstance(msg, wire.Trim):
                if msg.flags & Flag.ZEROES:
                    dev.write_zeroes(msg.offset, msg.length, fua=bool(msg.flags & Flag.FUA))
                else:
                    dev.trim(msg.offset, msg.length)
                    if msg.flags & Flag.FUA:
                        dev.flush()
            elif isinstance(msg, wire.Trigger) and msg.flags & Flag.MISSED:
                self.stats["missed_triggers"] += 1   # a barrier only: the sender could not cut here exactly
            elif isinstance(msg, (wire.BackupList, wire.BackupRead)):
                return self._backup(msg)
            elif isinstance(msg, wire.Trigger):
                self.stats["triggers"] += 1
                if self.on_trigger is not None:
                    self.on_trigger(msg.id, msg.label, msg.seq)
        except HalError as exc:
            code = next((c for cls, c in _HAL_ERRORS if isinstance(exc, cls)), ErrorCode.IO)
            return wire.Error(seq=msg.seq, of=msg.type, code=code, message=str(exc))
        return wire.Ack(seq=msg.seq, of=msg.type)

    def _backup(self, msg) -> wire.Message:
        if self.backups is None:
            return wire.Error(seq=msg.seq, of=msg.type, code=ErrorCode.UNKNOWN_TYPE,
                              message="this board keeps no backups")
        if isinstance(msg, wire.BackupList):
            return wire.Ack(seq=msg.seq, of=msg.type, data=wire.pack_backups(self.backups.entries()))
        if msg.length > self.max_transfer:
            return self._too_large(msg, msg.length)
        check_io(msg.offset, msg.length, self.device.size, self.device.block_size)
        try:
            data = self.backups.read(msg.trigger_id, msg.offset, msg.length)
        except LookupError:
            return wire.Error(seq=msg.seq, of=msg.type, code=ErrorCode.NO_BACKUP,
                              message=f"no frozen backup of TRIGGER {msg.trigger_id}")
        return wire.Ack(seq=msg.seq, of=msg.type, data=data)

    def _too_large(self, msg, n):
        return wire.Error(seq=msg.seq, of=msg.type, code=ErrorCode.TOO_LARGE,
                          message=f"{n} bytes is above max_transfer {self.max_transfer}")
