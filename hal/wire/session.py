"""The wire protocol's session engine, both ends, transport-free (docs/wire-protocol.md, section 3).

Owns ``HostSession`` (the initiator: INFO handshake, sequence numbers, a bounded
window, retransmission on timeout and on NAK with backoff and a bound on
retries, resync after a reconnect) and ``DeviceSession`` (the responder:
handshake, execution strictly in seq order within the window, the reply cache
that answers a duplicate without running it again, NAKs; it lives in
``device_session`` and is exported here). The caller hands it
the bytes it received, sends the bytes it hands out and tells it the time; it
never opens a port, starts a thread, sleeps or reads a clock, and it is not
thread-safe: a transport with threads holds one lock around every call.
"""
from __future__ import annotations

import collections
import logging
import os

from splitpoint.hal.contract import DeviceClosedError, DeviceGoneError, HalError, MisalignedError, OutOfRangeError
from splitpoint.hal.contract import ReadOnlyError
from splitpoint.hal.wire import messages as wire
from splitpoint.hal.wire.device_session import DeviceSession  # noqa: F401  (the responder side, one import)
from splitpoint.hal.wire.messages import ErrorCode, Flag, MsgType

log = logging.getLogger("splitpoint.hal.wire")

DEFAULT_RATE = 1_000_000  # bytes/s assumed for the timers when the link's rate is not known
DEFAULT_RTO = 0.2  # seconds: the fixed part of the retransmission timeout
DEFAULT_RETRIES = 8
DEFAULT_RECONNECT = 5.0  # seconds a lost link may stay lost before its requests fail
HOST_WINDOW = 32  # the host's own window; the board's INFO usually lowers it
HELLO_FLOOR = 0.05  # seconds: the shortest wait for INFO's answer, whatever the rto
# A request's timer doubles at each retransmission, up to 2**BACKOFF_DOUBLINGS times the rto: when the
# replies are late because the path is congested (a loaded host, a slow board), resending at a fixed
# rate multiplies the work on it (every duplicate READ comes back as a full replay) until no reply
# arrives in time at all; backing off lets the queue drain.
BACKOFF_DOUBLINGS = 3

DOWN, HANDSHAKING, UP = "down", "handshaking", "up"  # HostSession.state


class WireProtocolError(HalError):
    """The board answered with a protocol error (bad payload, unknown type, stale seq...)."""


class BoardIOError(HalError):
    """The board's medium failed the request (ERROR IO)."""


class BoardResetError(DeviceGoneError):
    """The board lost its session (reset or power loss): unacknowledged requests may or may not be applied."""


#: the exception a host raises for each ERROR code (others: WireProtocolError)
HOST_ERRORS = {ErrorCode.OUT_OF_RANGE: OutOfRangeError, ErrorCode.MISALIGNED: MisalignedError,
               ErrorCode.READ_ONLY: ReadOnlyError, ErrorCode.IO: BoardIOError}


def backoff(tries: int) -> int:
    """How many rtos a request waits for its reply after its ``tries``-th retransmission."""
    return 1 << min(tries, BACKOFF_DOUBLINGS)


def new_session_id() -> int:
    """A random non-zero session number (0 is reserved)."""
    return int.from_bytes(os.urandom(4), "little") | 1


class Request:
    """One sequenced request of a HostSession, from submit to its reply or its error."""

    __slots__ = ("seq", "msg", "wire", "reply", "error", "sent_at", "attempt_at", "tries", "queued",
                 "reply_bytes", "written", "finished")

    def __init__(self, msg: wire.Message, reply_bytes: int = 0):
        self.seq = msg.seq
        self.msg = msg
        self.wire = msg.encode()
        self.reply: wire.Message | None = None  # the ACK or ERROR that finished it
        self.error: BaseException | None = None
        self.sent_at: float | None = None  # None: not on the line yet (queued, or waiting for a link)
        # when the latest (re)transmission was queued: the timer runs from here, so a line that stopped
        # taking bytes (a hung board) still counts tries and gives up in bounded time
        self.attempt_at: float | None = None
        self.tries = 0  # retransmissions so far
        self.queued = False  # waiting in the send queue
        self.reply_bytes = reply_bytes  # bytes its reply will take on the line (the rto counts them)
        self.written = False  # handed to the transport at least once: the board may have run it
        self.finished = False

    @property
    def data(self) -> bytes | None:
        """A READ's data once answered, else None."""
        return self.reply.data if self.reply is not None and self.msg.type == MsgType.READ else None


class HostSession:
    """The host's side of one session with a board, over whatever link the caller has.

    The caller calls ``connect(now)`` on each new link, ``feed(data, now)`` with
    the bytes it reads, ``tick(now)`` every poll interval, writes what
    ``next_frame(now)`` (or ``outgoing(now)``) hands out, and ``link_lost(now)``
    when the link fails. ``state`` says what it needs: DOWN, a (new) link;
    HANDSHAKING, the link read and written; UP, requests flow. Each finished
    request goes to ``on_complete(request)``, in the order replies arrive.
    """

    def __init__(self, link: str = "board", window: int = HOST_WINDOW, rto: float = DEFAULT_RTO,
                 rate: int | None = None, retries: int = DEFAULT_RETRIES, reconnect: float = DEFAULT_RECONNECT,
                 expect_board: str | None = None, on_complete=None, request_factory=Request,
                 poll_interval: float = 0.0, session: int | None = None, first_seq: int = 1,
                 no_answer_hint: str = "", target: str = "", origin: str = ""):
        self.link = link  # what the messages call the link (a port URL)
        self.host_window = min(window, wire.MAX_WINDOW)
        self.base_rto = rto
        self.rate = rate or DEFAULT_RATE
        self.retries = retries
        self.reconnect_timeout = reconnect
        self.expect_board = expect_board
        self.on_complete = on_complete or (lambda req: None)
        self.request_factory = request_factory
        self.poll_interval = poll_interval  # how often the caller ticks: the give-up bound adds two
        self.no_answer_hint = no_answer_hint
        self.target = target  # a device link: the far controller's LUN named in INFO ("" for a board)
        self.origin = origin  # a device link: who this host is, as the far side shows it
        self.session = session or new_session_id()
        self.next_seq = first_seq
        self.info: wire.BoardInfo | None = None
        self.window = 1
        self.incarnation = 0  # +1 each time the board turns out to have lost its session (and maybe its medium)
        self.state = DOWN
        self.stats = collections.Counter()
        self.out: dict[int, Request] = {}  # insertion order is seq order
        self.gone: DeviceGoneError | None = None  # why new requests fail at once, until the next handshake
        self.handshake_error: HalError | None = None  # why the latest handshake failed
        self.closed = False
        self._inflight_bytes = 0
        self._sendq: collections.deque[Request] = collections.deque()
        self._hello: bytes | None = None  # INFO waiting to be written
        self._nonce = 0
        self._hello_tries = 0
        self._hello_due = 0.0
        self._first_seq = first_seq  # the first_seq the latest INFO proposed
        self._lost_at: float | None = None
        self._abandoned = False  # requests were failed unanswered: the next handshake starts a new session
        self._decoder = wire.frame.FrameDecoder()

    # ---- timers ----
    @property
    def up(self) -> bool:
        return self.state == UP

    def rto(self) -> float:
        """The retransmission timeout for the bytes in flight now (requests and expected replies)."""
        return self.base_rto + 2 * self._inflight_bytes / self.rate

    @property
    def max_rto(self) -> float:
        """The retransmission timeout with a full window in flight."""
        frame_bytes = (self.info.max_transfer if self.info else 65536) + 64
        return self.base_rto + 2 * self.window * frame_bytes / self.rate

    @property
    def give_up_after(self) -> float:
        """Longest a request waits on a board that stopped answering before DeviceGoneError."""
        return sum(backoff(k) for k in range(self.retries + 1)) * self.max_rto + self.poll_interval * 2

    # ---- the link ----
    def connect(self, now: float) -> None:
        """A new link is open: handshake INFO on it (resuming our session if the board still holds it)."""
        self._unsend()
        self._decoder = wire.frame.FrameDecoder()
        self.state = HANDSHAKING
        self.handshake_error = None
        self._hello_tries = 0
        if self._abandoned:  # seqs were given up on: the board would wait for them forever
            self.session = new_session_id()
        self._send_hello(now)

    def _send_hello(self, now: float) -> None:
        self._nonce = (self._nonce + 1) & 0xFFFFFFFF
        # A session that starts afresh after a reconnect starts past every seq sent before: a frame of the
        # old session still on the line (a retransmission in the board's receive path) is then older than
        # the new session and answered STALE, never executed as the new request of its seq.
        first_seq = self.next_seq if self.info is None else wire.seq_add(self.next_seq, wire.MAX_WINDOW)
        self._first_seq = first_seq
        msg = wire.Info(seq=self._nonce, flags=Flag.RETRANSMIT if self._hello_tries else 0, session=self.session,
                        first_seq=first_seq, target=self.target, origin=self.origin)
        self._hello = b"\x00" + msg.encode()  # the leading delimiter ends any torn frame on the line
        self._hello_due = now + max(self.base_rto, HELLO_FLOOR) * (2 + self._hello_tries)

    def link_lost(self, now: float) -> None:
        """The link failed (a read or write error: the board unplugged): wait for a new one."""
        if self.state == UP:
            self.stats["link_lost"] += 1
            self._lost_at = now
        self._go_down()

    def _go_down(self) -> None:
        self.state = DOWN
        self._hello = None
        self._unsend()

    def _unsend(self) -> None:
        """Nothing outstanding is on the line any more (caller: the link changed)."""
        self._sendq.clear()
        for req in self.out.values():
            req.sent_at = None
            req.attempt_at = None
            req.queued = False

    def _fail_handshake(self, err: HalError) -> None:
        self.handshake_error = err
        self._go_down()

    def _check_info(self, info: wire.BoardInfo) -> None:
        if not info.proto_min <= wire.PROTOCOL_VERSION <= info.proto_max:
            raise WireProtocolError(f"board speaks protocol {info.proto_min}..{info.proto_max}, this host "
                                    f"{wire.PROTOCOL_MIN}..{wire.PROTOCOL_VERSION}")
        if self.expect_board and info.board_id != self.expect_board:
            raise WireProtocolError(f"the board on {self.link!r} is {info.board_id!r}, not {self.expect_board!r}")
        if info.block_size <= 0 or info.block_size & (info.block_size - 1) or info.capacity % info.block_size:
            raise WireProtocolError(f"board reports a bad geometry: capacity {info.capacity}, block {info.block_size}")
        if info.max_transfer < info.block_size or not 1 <= info.window <= wire.MAX_WINDOW:
            raise WireProtocolError(f"board reports max_transfer {info.max_transfer} and window {info.window}")

    def _on_hello_reply(self, reply: wire.Message, now: float) -> None:
        if isinstance(reply, wire.Error):
            self._fail_handshake(WireProtocolError(f"board refused INFO: {_code_name(reply.code)}: {reply.message}"))
            return
        info = reply.info
        if info is None:
            return
        try:
            self._check_info(info)
        except WireProtocolError as exc:
            self._fail_handshake(exc)
            return
        resumed = bool(reply.flags & Flag.RESUMED)
        first = self.info is None
        if resumed and not first and not self._resumable(info.next_seq):
            # The board "resumed" a session it began from one of our own INFOs after it lost its state.
            self.stats["false_resumes"] += 1
            if info.next_seq != self._first_seq:
                # from an INFO of an earlier handshake, delayed on the line: frames of that time may still be
                # on their way with seqs this session would reuse; only a new session is safe
                self.session = new_session_id()
                self._hello_tries = 0
                self._send_hello(now)
                return
            resumed = False  # from this handshake's INFO whose ACK was lost: it starts past all we ever sent
        if not first:
            self.stats["reconnects"] += 1
            log.warning("board on %r: reconnected, session %s", self.link,
                        "resumed" if resumed else "lost (the board was reset): unanswered requests fail")
            if not resumed:
                self.incarnation += 1  # a new session: the board may have lost its medium (the pool re-checks it)
                err = BoardResetError(f"board on {self.link!r} lost its session (reset or power loss): "
                                      f"this request may or may not have been applied")
                for req in [r for r in self.out.values() if r.written]:
                    self._complete(req, None, err)
                self._renumber(info.next_seq)  # the rest never reached the line: they go in the new session
        self.gone = None
        self._abandoned = False
        self.info = info
        self.window = min(self.host_window, info.window)
        self._hello = None
        self.state = UP
        self._decoder = wire.frame.FrameDecoder(info.max_transfer + 64)
        for req in self.out.values():  # resend in seq order; the board replays what it already ran
            req.tries += 1
            self._enqueue(req, now)

    def _resumable(self, board_next: int) -> bool:
        """Whether a board whose next seq is ``board_next`` can hold our session: it has executed every
        answered request and none we never sent, so it stands between the oldest outstanding and next_seq."""
        oldest = next(iter(self.out)) if self.out else self.next_seq
        return wire.seq_after(board_next, oldest) >= 0 and wire.seq_after(board_next, self.next_seq) <= 0

    def _renumber(self, first_seq: int) -> None:
        """Number the requests still outstanding (never written) from ``first_seq`` on."""
        reqs = list(self.out.values())
        self.out.clear()
        seq = first_seq
        for req in reqs:
            req.seq = req.msg.seq = seq
            req.wire = req.msg.encode()
            self.out[seq] = req
            seq = wire.seq_add(seq, 1)
        self.next_seq = seq

    # ---- bytes in ----
    def feed(self, data: bytes, now: float) -> None:
        """Bytes read from the link."""
        decoder = self._decoder
        for frm in decoder.feed(data):
            self.on_frame(frm, now)
        decoder.pop_errors()

    def on_frame(self, frm: tuple, now: float) -> None:
        """One decoded frame (version, type, flags, seq, payload) from the board."""
        try:
            msg = wire.decode_message(frm)
        except wire.WireError:
            self.stats["bad_replies"] += 1
            return
        if isinstance(msg, wire.Nak):
            if self.state == UP:
                self._on_nak(msg, now)
            return
        if msg.type not in (MsgType.ACK, MsgType.ERROR):
            self.stats["ignored"] += 1
            return
        if self.state == HANDSHAKING:
            if msg.seq == self._nonce and msg.of == MsgType.INFO:  # not a late reply whose seq equals the nonce
                self._on_hello_reply(msg, now)
            return
        req = self.out.get(msg.seq)
        if req is None or req.msg.type != msg.of:
            self.stats["duplicate_replies"] += 1
            return
        if isinstance(msg, wire.Error) and msg.code == ErrorCode.WINDOW:
            self.stats["window_errors"] += 1  # resent when its timer runs out
            return
        if isinstance(msg, wire.Error) and msg.code == ErrorCode.NO_SESSION:
            self.stats["no_session"] += 1
            self._lost_at = now
            self._go_down()  # the board forgot us: handshake again on a new link, then resend
            return
        if msg.flags & Flag.REPLAY:
            self.stats["replayed_replies"] += 1
        self._complete(req, msg, None)

    def _on_nak(self, nak: wire.Nak, now: float) -> None:
        self.stats["naks"] += 1
        holdoff = self.rto() / 4
        highest = nak.received.bit_length()  # seqs up to expected + highest are known to the board
        for req in self.out.values():
            d = wire.seq_after(req.seq, nak.expected)
            if d < 0 or req.queued or req.sent_at is None:
                continue
            if d > 0 and (d > highest or nak.received >> (d - 1) & 1):
                continue  # not provably missing, or already buffered on the board
            if now - req.sent_at >= holdoff:
                self._resend(req, now)

    # ---- bytes out ----
    def _enqueue(self, req: Request, now: float) -> None:
        req.queued = True
        req.attempt_at = now
        self._sendq.append(req)

    def _resend(self, req: Request, now: float) -> None:
        req.tries += 1
        self.stats["retransmits"] += 1
        req.msg.flags |= Flag.RETRANSMIT
        req.wire = req.msg.encode()
        self._enqueue(req, now)

    def next_frame(self, now: float) -> bytes | None:
        """The next bytes to write to the link, or None; a request handed out counts as on the line."""
        if self._hello is not None:
            hello, self._hello = self._hello, None
            return hello
        while self._sendq:
            req = self._sendq.popleft()
            req.queued = False
            if self.state != UP or req.finished:
                continue
            req.written = True  # before the write: a torn write may still reach the board
            req.sent_at = now
            self.stats["frames_sent"] += 1
            return req.wire
        return None

    def outgoing(self, now: float) -> bytes:
        """Every byte waiting to be written, at once."""
        parts = []
        while (part := self.next_frame(now)) is not None:
            parts.append(part)
        return b"".join(parts)

    @property
    def has_outgoing(self) -> bool:
        return self._hello is not None or (self.state == UP and bool(self._sendq))

    # ---- timers ----
    def tick(self, now: float) -> None:
        """Run the timers: INFO's resend, each request's retransmission, the give-up bounds."""
        if self.state == HANDSHAKING:
            if now >= self._hello_due:
                self._hello_tries += 1
                if self._hello_tries > self.retries:
                    hint = f"; {self.no_answer_hint}" if self.no_answer_hint else ""
                    self._fail_handshake(DeviceGoneError(f"no board answered INFO on {self.link!r} after "
                                                         f"{self._hello_tries} tries{hint}"))
                else:
                    self._send_hello(now)
            return
        if self.state == DOWN:
            lost_for = now - (self._lost_at if self._lost_at is not None else now)
            if lost_for > self.reconnect_timeout and self.out:
                err = DeviceGoneError(f"board on {self.link!r} has been gone for {lost_for:.1f} s (reconnect "
                                      f"timeout {self.reconnect_timeout} s); plug it back in or restart the emulator")
                log.error("%s", err)
                self._abandon(err)
            return
        rto = self.rto()
        for req in self.out.values():
            if req.attempt_at is None or now - req.attempt_at < rto * backoff(req.tries):
                continue
            if req.tries >= self.retries:
                err = DeviceGoneError(f"board on {self.link!r} stopped answering: {req.msg.type.name} seq {req.seq} "
                                      f"got no reply after {req.tries + 1} tries (gives up within "
                                      f"{self.give_up_after:.1f} s)")
                self.stats["gave_up"] += 1
                log.error("%s", err)
                self._abandon(err)
                self._lost_at = now
                self._go_down()  # reopen and handshake a new session before anything else is sent
                return
            self.stats["timeouts"] += 1
            if req.queued:  # still waiting behind a blocked write: count the try, keep its place
                req.tries += 1
                req.attempt_at = now
            else:
                self._resend(req, now)

    # ---- requests ----
    def can_submit(self) -> bool:
        """True while one more request fits in the window."""
        return not self.out or wire.seq_after(self.next_seq, next(iter(self.out))) < self.window

    def submit(self, msg: wire.Message, reply_bytes: int, now: float) -> Request:
        """Number ``msg`` and queue it; the caller checks ``can_submit`` first (the window bound)."""
        if self.closed:
            raise DeviceClosedError(f"the session on {self.link!r} is closed")
        if self.state != UP and self.gone is not None:
            raise DeviceGoneError(str(self.gone))
        if not self.can_submit():
            raise RuntimeError(f"window of {self.window} full: wait for a reply before submitting")
        msg.seq = self.next_seq
        self.next_seq = wire.seq_add(self.next_seq, 1)
        req = self.request_factory(msg, reply_bytes)
        self.out[req.seq] = req
        self._inflight_bytes += len(req.wire) + reply_bytes
        if self.state == UP:
            self._enqueue(req, now)
        return req

    def _complete(self, req: Request, reply, error) -> None:
        if self.out.pop(req.seq, None) is None:
            return
        self._inflight_bytes -= len(req.wire) + req.reply_bytes
        if error is None and isinstance(reply, wire.Error):
            cls = HOST_ERRORS.get(reply.code, WireProtocolError)
            error = cls(f"board {self.info.board_id if self.info else '?'}: {req.msg.type.name} seq {req.seq} "
                        f"failed: {_code_name(reply.code)}: {reply.message}")
        req.reply = reply
        req.error = error
        req.finished = True
        self.on_complete(req)

    def _abandon(self, err: DeviceGoneError) -> None:
        """Fail every outstanding request with ``err``; until a new handshake, new ones fail at once."""
        self.gone = err
        self._abandoned = True
        self.fail_all(lambda req: err)

    def fail_all(self, error_factory) -> None:
        """Finish every outstanding request with ``error_factory(request)``."""
        for req in list(self.out.values()):
            self._complete(req, None, error_factory(req))

    def close(self) -> None:
        """No more requests; the outstanding ones fail with DeviceClosedError."""
        self.closed = True
        self._go_down()
        self.fail_all(lambda req: DeviceClosedError(f"the session on {self.link!r} closed with seq {req.seq} "
                                                    f"unanswered"))


def _code_name(code: int) -> str:
    return ErrorCode(code).name if code in set(ErrorCode) else str(code)

