"""The board's side of a session over its medium, transport-free: frames in, reply messages out.

Owns ``BoardEngine``: the handshake, in-order execution within the window,
the reply cache that answers a duplicate without running it again, NAKs, and
the mapping of the medium's errors to the protocol's codes. It never touches
a pty, a thread or a clock, and never decides what a TRIGGER means: it hands
each one, in seq order, to the callback it is given.
"""
from __future__ import annotations

import collections

from splitpoint.hal import wire
from splitpoint.hal.contract import (BlockDevice, HalError, MisalignedError, OutOfRangeError, ReadOnlyError,
                                     ZeroLengthError)
from splitpoint.hal.wire import ErrorCode, Feature, Flag, MsgType

_HAL_ERRORS = ((OutOfRangeError, ErrorCode.OUT_OF_RANGE), (MisalignedError, ErrorCode.MISALIGNED),
               (ZeroLengthError, ErrorCode.MISALIGNED), (ReadOnlyError, ErrorCode.READ_ONLY))


class BoardEngine:
    """The board's side of a session, transport-agnostic: frames in, reply messages out.

    Requests execute strictly in seq order. Out-of-order arrivals inside the
    window wait in ``buffered``; the replies of the last ``window`` executed
    seqs stay in ``replies`` so a duplicate is answered again, never re-run.
    """

    def __init__(self, device: BlockDevice, board_id: str, window: int = 8, max_transfer: int = 16384,
                 features: int = 0, firmware: int = 0, on_trigger=None):
        if not 1 <= window <= wire.MAX_WINDOW:
            raise ValueError(f"window {window} must be 1..{wire.MAX_WINDOW}")
        self.device = device
        self.board_id = board_id
        self.window = window
        self.max_transfer = max_transfer
        self.features = features | (Feature.READ_ONLY if device.read_only else 0)
        self.firmware = firmware
        self.on_trigger = on_trigger  # fn(id, label, seq), called in seq order
        self.session = None
        self.expected = 0
        self.buffered: dict[int, object] = {}
        self.replies: collections.OrderedDict[int, wire.Message] = collections.OrderedDict()
        self._nak_for = None
        self.stats = collections.Counter()

    def info(self) -> wire.BoardInfo:
        return wire.BoardInfo(self.device.size, self.device.block_size, self.max_transfer, self.window,
                              self.features, self.firmware, self.session or 0, self.expected, self.board_id)

    def _received_bitmap(self) -> int:
        bits = 0
        for seq in self.buffered:
            d = wire.seq_after(seq, self.expected) - 1
            if 0 <= d < 32:
                bits |= 1 << d
        return bits

    def nak(self) -> wire.Nak:
        self.stats["naks"] += 1
        return wire.Nak(seq=0, expected=self.expected, received=self._received_bitmap())

    def on_rejected_frame(self) -> list:
        """A frame failed its COBS/length/CRC check: ask for a resend of what is missing."""
        self.stats["rejected_frames"] += 1
        return [self.nak()] if self.session is not None else []

    def on_frame(self, frm: tuple) -> list:
        """Replies to send for one decoded frame (version, type, flags, seq, payload)."""
        try:
            msg = wire.decode_message(frm)
        except wire.WireError as exc:
            self.stats["bad_messages"] += 1
            if exc.type >= 0x80:
                return []  # a reply type travelling the wrong way: nothing to answer
            if exc.type == MsgType.INFO:  # INFO is never sequenced: answer at once
                return [wire.Error(seq=exc.seq, of=MsgType.INFO, code=exc.code, message=str(exc))]
            msg = exc  # a malformed or unknown request still takes its turn in seq order
        if not isinstance(msg, wire.WireError) and msg.type not in wire.REQUEST_TYPES:
            self.stats["ignored"] += 1
            return []
        if isinstance(msg, wire.Info):
            return [self._handshake(msg)]
        seq = msg.seq
        if self.session is None:
            return [wire.Error(seq=seq, of=msg.type & 0xFF, code=ErrorCode.NO_SESSION,
                               message="no session: send INFO first")]
        d = wire.seq_after(seq, self.expected)
        if d < 0:
            cached = self.replies.get(seq)
            if cached is None:
                self.stats["stale"] += 1
                return [wire.Error(seq=seq, of=msg.type & 0xFF, code=ErrorCode.STALE, flags=Flag.REPLAY,
                                   message=f"seq {seq} is older than the reply cache (expected {self.expected})")]
            self.stats["replays"] += 1
            cached.flags |= Flag.REPLAY
            return [cached]
        if d >= self.window:
            self.stats["window"] += 1
            return [wire.Error(seq=seq, of=msg.type & 0xFF, code=ErrorCode.WINDOW,
                               message=f"seq {seq} is beyond expected {self.expected} + window {self.window}")]
        if d > 0:
            if seq in self.buffered:
                self.stats["duplicates_buffered"] += 1
                return []
            self.buffered[seq] = msg
            if self._nak_for != self.expected:  # one NAK per gap; the host's timer covers the rest
                self._nak_for = self.expected
                return [self.nak()]
            return []
        out = [self._execute(msg)]
        while self.expected in self.buffered:
            out.append(self._execute(self.buffered.pop(self.expected)))
        return out

    def _handshake(self, msg: wire.Info) -> wire.Ack:
        if msg.session == 0:
            return wire.Error(seq=msg.seq, of=MsgType.INFO, code=ErrorCode.BAD_PAYLOAD,
                              message="session 0 is reserved; pick a random non-zero session")
        if msg.session != self.session:
            self.stats["sessions"] += 1
            self.session = msg.session
            self.expected = msg.first_seq
            self.buffered.clear()
            self.replies.clear()
            flags = 0
        else:
            self.stats["resumes"] += 1
            flags = Flag.RESUMED
        self._nak_for = None
        return wire.Ack(seq=msg.seq, flags=flags, of=MsgType.INFO, info=self.info())

    def _execute(self, msg) -> wire.Message:
        seq = self.expected
        reply = self._run(msg)
        self.expected = wire.seq_add(self.expected, 1)
        self._nak_for = None
        self.replies[seq] = reply
        while len(self.replies) > self.window:
            self.replies.popitem(last=False)
        self.stats["executed"] += 1
        return reply

    def _run(self, msg) -> wire.Message:
        if isinstance(msg, wire.WireError):
            return wire.Error(seq=msg.seq, of=msg.type & 0xFF, code=msg.code, message=str(msg))
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
            elif isinstance(msg, wire.Trigger):
                self.stats["triggers"] += 1
                if self.on_trigger is not None:
                    self.on_trigger(msg.id, msg.label, msg.seq)
        except HalError as exc:
            code = next((c for cls, c in _HAL_ERRORS if isinstance(exc, cls)), ErrorCode.IO)
            return wire.Error(seq=msg.seq, of=msg.type, code=code, message=str(exc))
        return wire.Ack(seq=msg.seq, of=msg.type)

    def _too_large(self, msg, n):
        return wire.Error(seq=msg.seq, of=msg.type, code=ErrorCode.TOO_LARGE,
                          message=f"{n} bytes is above max_transfer {self.max_transfer}")
