"""The responder's side of a wire-protocol session, transport-free (docs/wire-protocol.md, section 3).

Owns ``DeviceSession``: the INFO handshake, execution strictly in seq order
within the window, the reply cache that answers a duplicate without running it
again, NAKs for rejected frames and gaps, and the session errors (NO_SESSION,
STALE, WINDOW, a malformed request taking its turn). What a request *does* is
the ``execute`` callback's; it never touches a medium, a port, a thread or a
clock. ``splitpoint.hal.wire.session`` exports it beside the host's side.
"""
from __future__ import annotations

import collections

from splitpoint.hal.wire import messages as wire
from splitpoint.hal.wire.messages import ErrorCode, Flag, MsgType


class DeviceSession:
    """A device's side of a session: frames (or bytes) in, reply messages out.

    ``execute(msg) -> Ack | Error`` runs one well-formed request, in seq order;
    ``describe() -> BoardInfo`` is the device's INFO (the session fills in its
    own ``session`` and ``next_seq``). Out-of-order arrivals inside the window
    wait in ``buffered``; the replies of the last ``window`` executed seqs stay
    in ``replies`` so a duplicate is answered again, never run again.
    """

    def __init__(self, window: int, execute, describe, max_payload: int = wire.frame.DEFAULT_MAX_PAYLOAD,
                 stats: collections.Counter | None = None):
        if not 1 <= window <= wire.MAX_WINDOW:
            raise ValueError(f"window {window} must be 1..{wire.MAX_WINDOW}")
        self.window = window
        self.execute = execute
        self.describe = describe
        self.session: int | None = None  # None: no handshake yet (or the device lost it): NO_SESSION
        self.expected = 0  # the next seq to execute
        self.buffered: dict[int, object] = {}  # seq -> request (or WireError) waiting for the gap before it
        self.replies: collections.OrderedDict[int, wire.Message] = collections.OrderedDict()
        self.decoder = wire.frame.FrameDecoder(max_payload)
        self.stats = collections.Counter() if stats is None else stats
        self._nak_for = None  # the `expected` a gap NAK was last sent for: one per gap

    def info(self) -> wire.BoardInfo:
        info = self.describe()
        info.session = self.session or 0
        info.next_seq = self.expected
        return info

    # ---- bytes and frames in ----
    def feed(self, data: bytes) -> list:
        """Reply messages for the bytes received; a frame that fails its checks is NAKed."""
        before = self.decoder.rejected
        replies = []
        for frm in self.decoder.feed(data):
            replies += self.on_frame(frm)
        for _ in range(self.decoder.rejected - before):
            replies += self.on_rejected_frame()
        self.decoder.pop_errors()
        return replies

    def reset_link(self) -> None:
        """A new link: drop any torn frame of the old one (the session itself is kept)."""
        self.decoder.reset()

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

    def _handshake(self, msg: wire.Info) -> wire.Message:
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
        if isinstance(msg, wire.WireError):
            reply = wire.Error(seq=msg.seq, of=msg.type & 0xFF, code=msg.code, message=str(msg))
        else:
            reply = self.execute(msg)
        self.expected = wire.seq_add(self.expected, 1)
        self._nak_for = None
        self.replies[seq] = reply
        while len(self.replies) > self.window:
            self.replies.popitem(last=False)
        self.stats["executed"] += 1
        return reply
