"""The ``serial://`` backend: a storage bridge board on any pyserial port, over the wire protocol.

Owns the host side of a session (docs/wire-protocol.md, section 3): the INFO
handshake, sequence numbers, a bounded window of pipelined requests,
retransmission on timeout and NAK with a bound on retries, reconnect after an
unplug, and the specific errors for a board that stops answering. A link
thread reads and keeps the timers; a writer thread owns the port's write side,
so no caller and no timer ever blocks behind a full line. It never retries
on the controller's behalf beyond what the protocol needs to deliver a request
exactly once.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from urllib.parse import parse_qsl, unquote

from splitpoint.hal import wire
from splitpoint.hal.contract import (BadURLError, BlockDevice, DeviceClosedError, DeviceGoneError, HalError,
                                     MisalignedError, OutOfRangeError, ReadOnlyError, check_io)
from splitpoint.hal.url import parse_size
from splitpoint.hal.wire import ErrorCode, Flag, MsgType

log = logging.getLogger("splitpoint.hal.serial")

# URL grammar:  serial://PORT[?baud=N][&rate=BYTES_PER_S][&window=N][&rto=DURATION][&retries=N][&reconnect=DURATION]
#   PORT is a device path (serial:///dev/ttyACM0) or any pyserial URL (serial://socket://127.0.0.1:7000,
#   serial://hwgrep://2E8A:000A, serial://rfc2217://host:port); the options after the first '?' are ours.
GRAMMAR = ("serial://PORT[?baud=N][&rate=BYTES_PER_S][&window=N][&rto=DURATION][&retries=N]"
           "[&reconnect=DURATION]")
OPTIONS = {"baud", "rate", "window", "rto", "retries", "reconnect"}

DEFAULT_RATE = 1_000_000  # bytes/s assumed for the timers when the link's rate is not known
DEFAULT_RTO = 0.2  # seconds: the fixed part of the retransmission timeout
DEFAULT_RETRIES = 8
DEFAULT_RECONNECT = 5.0
HOST_WINDOW = 32  # the host's own window; the board's INFO usually lowers it
TICK = 0.02  # link-thread poll interval
# A request's timer doubles at each retransmission, up to 2**BACKOFF_DOUBLINGS times the rto: when the
# replies are late because the path is congested (a loaded host, a slow board), resending at a fixed
# rate multiplies the work on it (every duplicate READ comes back as a full replay) until no reply
# arrives in time at all; backing off lets the queue drain.
BACKOFF_DOUBLINGS = 3


class WireProtocolError(HalError):
    """The board answered with a protocol error (bad payload, unknown type, stale seq...)."""


class BoardIOError(HalError):
    """The board's medium failed the request (ERROR IO)."""


class BoardResetError(DeviceGoneError):
    """The board lost its session (reset or power loss): unacknowledged requests may or may not be applied."""


_ERRORS = {ErrorCode.OUT_OF_RANGE: OutOfRangeError, ErrorCode.MISALIGNED: MisalignedError,
           ErrorCode.READ_ONLY: ReadOnlyError, ErrorCode.IO: BoardIOError}


def _seconds(text: str, what: str) -> float:
    from splitpoint.hal.filters import FaultSpecError, parse_duration

    try:
        return parse_duration(what, text)
    except FaultSpecError as exc:
        raise BadURLError(f"{exc}; grammar: {GRAMMAR}") from None


def split_serial_url(url: str, scheme: str, grammar: str, allowed: set[str]) -> tuple[str, dict[str, str]]:
    """(port, options) of ``scheme://PORT?opts``; unknown options are rejected with the grammar."""
    prefix = f"{scheme}://"
    if not url.lower().startswith(prefix):
        raise BadURLError(f"{url!r} is not a {prefix} URL; grammar: {grammar}")
    rest = url[len(prefix):]
    port, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in allowed:
            raise BadURLError(f"unknown option {key!r} in {url!r}; grammar: {grammar} "
                              f"(valid options: {', '.join(sorted(allowed))})")
        if key in options:
            raise BadURLError(f"option {key!r} given twice in {url!r}; grammar: {grammar}")
        options[key] = value
    return unquote(port), options


def _positive_int(opts: dict, key: str, default, grammar: str, low: int = 1, high: int | None = None):
    if key not in opts:
        return default
    text = opts[key]
    try:
        value = int(parse_size(text))
    except (BadURLError, ValueError):
        raise BadURLError(f"{key}={text!r} is not a whole number; grammar: {grammar}") from None
    if value < low or (high is not None and value > high):
        raise BadURLError(f"{key}={value} is out of range {low}..{high or 'inf'}; grammar: {grammar}")
    return value


class Pending:
    """One request in flight; ``result()`` waits for its reply."""

    __slots__ = ("seq", "msg", "wire", "event", "reply", "error", "sent_at", "attempt_at", "tries", "queued",
                 "reply_bytes", "written")

    def __init__(self, msg: wire.Message, reply_bytes: int):
        self.seq = msg.seq
        self.msg = msg
        self.wire = msg.encode()
        self.event = threading.Event()
        self.reply = None
        self.error: BaseException | None = None
        self.sent_at: float | None = None  # None: not on the line yet (queued or waiting for a link)
        # when the latest (re)transmission was queued: the timer runs from here, so a line that
        # stopped taking bytes (a hung board) still counts tries and gives up in bounded time
        self.attempt_at: float | None = None
        self.tries = 0
        self.queued = False
        self.reply_bytes = reply_bytes
        self.written = False  # its bytes went to the port at least once: the board may have run it

    def done(self) -> bool:
        return self.event.is_set()

    def result(self, timeout: float | None = None):
        """The ACK's data (READ) or None; raises the request's error."""
        if not self.event.wait(timeout):
            raise DeviceGoneError(f"request seq {self.seq} ({self.msg.type.name}) not answered in {timeout} s")
        if self.error is not None:
            raise self.error
        return self.reply.data if self.msg.type == MsgType.READ else None


class SerialDevice(BlockDevice):
    """A storage bridge board reached through pyserial."""

    scheme = "serial"
    #: every op waits for a link (up to the reconnect timeout): a controller runs it off its loop thread
    waits_on_link = True

    def __init__(self, port: str, baud: int = 115200, rate: int | None = None, window: int = HOST_WINDOW,
                 rto: float = DEFAULT_RTO, retries: int = DEFAULT_RETRIES, reconnect: float = DEFAULT_RECONNECT,
                 expect_board: str | None = None, serial_factory=None):
        import serial  # pyserial, imported only when a serial backend is used

        self.port_url = port
        self.baud = baud
        self.rate = rate or DEFAULT_RATE
        self.host_window = min(window, wire.MAX_WINDOW)
        self.base_rto = rto
        self.retries = retries
        self.reconnect_timeout = reconnect
        self.expect_board = expect_board
        self._serial_mod = serial
        self._factory = serial_factory or (lambda: serial.serial_for_url(
            port, baudrate=baud, timeout=TICK, write_timeout=max(1.0, rto * 4)))
        self.session = int.from_bytes(os.urandom(4), "little") | 1
        self.next_seq = 1
        self.info: wire.BoardInfo | None = None
        self.window = 1
        self.stats = collections.Counter()
        self._cv = threading.Condition()
        self._out: dict[int, Pending] = {}  # insertion order is seq order
        self._inflight_bytes = 0
        self._port = None
        self._up = False  # handshaken and writable
        self._closed = False
        self._lost_at: float | None = None
        self._gone: DeviceGoneError | None = None
        self._wq: collections.deque = collections.deque()
        self._wcv = threading.Condition()
        self._nonce = 0
        self._decoder = None
        self._abandoned = False  # requests were failed unanswered: the next handshake starts a new session
        self._open_first()
        self._reader = threading.Thread(target=self._link_loop, name=f"serial-link {port}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"serial-write {port}", daemon=True)
        self._reader.start()
        self._writer.start()

    # ---- URL ----
    @classmethod
    def from_url(cls, url: str) -> "SerialDevice":
        port, opts = split_serial_url(url, "serial", GRAMMAR, OPTIONS)
        if not port:
            raise BadURLError(f"{url!r} names no port; grammar: {GRAMMAR}")
        return cls(port, **cls._options(opts, GRAMMAR))

    @staticmethod
    def _options(opts: dict, grammar: str) -> dict:
        out = {}
        if "baud" in opts:
            out["baud"] = _positive_int(opts, "baud", None, grammar, 50, 50_000_000)
        if "rate" in opts:
            out["rate"] = _positive_int(opts, "rate", None, grammar)
        if "window" in opts:
            out["window"] = _positive_int(opts, "window", None, grammar, 1, wire.MAX_WINDOW)
        if "retries" in opts:
            out["retries"] = _positive_int(opts, "retries", None, grammar, 0, 1000)
        if "rto" in opts:
            out["rto"] = _seconds(opts["rto"], "rto")
        if "reconnect" in opts:
            out["reconnect"] = _seconds(opts["reconnect"], "reconnect")
        return out

    # ---- timers ----
    @property
    def max_rto(self) -> float:
        """The retransmission timeout with a full window in flight."""
        frame_bytes = (self.info.max_transfer if self.info else 65536) + 64
        return self.base_rto + 2 * self.window * frame_bytes / self.rate

    @staticmethod
    def backoff(tries: int) -> int:
        """How many rtos a request waits for its reply after its ``tries``-th retransmission."""
        return 1 << min(tries, BACKOFF_DOUBLINGS)

    @property
    def give_up_after(self) -> float:
        """Longest a request waits on a board that stopped answering before DeviceGoneError."""
        return sum(self.backoff(k) for k in range(self.retries + 1)) * self.max_rto + TICK * 2

    def _rto(self) -> float:
        return self.base_rto + 2 * self._inflight_bytes / self.rate

    # ---- opening and handshakes ----
    def _open_port(self):
        try:
            port = self._factory()
        except (self._serial_mod.SerialException, OSError, ValueError) as exc:
            return None, exc
        return port, None

    def _open_first(self):
        deadline = time.monotonic() + self.reconnect_timeout
        while True:
            port, exc = self._open_port()
            if port is not None:
                break
            if time.monotonic() >= deadline:
                raise DeviceGoneError(f"cannot open serial port {self.port_url!r}: {exc}; is the board plugged in "
                                      f"(see `splitpoint boards`) or the emulator running?")
            time.sleep(0.05)
        try:
            info, resumed = self._handshake(port)
        except DeviceGoneError:
            port.close()
            raise
        self._adopt(port, info)

    def _handshake(self, port) -> tuple[wire.BoardInfo, bool]:
        """INFO until answered, at most retries+1 times; runs on the port before anyone else writes to it."""
        decoder = wire.frame.FrameDecoder()
        if self._abandoned:  # seqs were given up on: the board would wait for them forever
            self.session = int.from_bytes(os.urandom(4), "little") | 1
        # A session that starts afresh after a reconnect starts past every seq sent before: a frame of
        # the old session still on the line (a retransmission in the board's receive path) is then
        # older than the new session and answered STALE, never executed as the new request of its seq.
        first_seq = self.next_seq if self.info is None else wire.seq_add(self.next_seq, wire.MAX_WINDOW)
        for attempt in range(self.retries + 1):
            self._nonce = (self._nonce + 1) & 0xFFFFFFFF
            msg = wire.Info(seq=self._nonce, flags=Flag.RETRANSMIT if attempt else 0, session=self.session,
                            first_seq=first_seq)
            try:
                port.reset_input_buffer()
                port.write(b"\x00" + msg.encode())  # the leading delimiter ends any torn frame on the line
                deadline = time.monotonic() + max(self.base_rto, 0.05) * (2 + attempt)
                while time.monotonic() < deadline:
                    for frm in decoder.feed(port.read(max(1, port.in_waiting))):
                        try:
                            reply = wire.decode_message(frm)
                        except wire.WireError:
                            continue
                        if (reply.seq != self._nonce or reply.type not in (MsgType.ACK, MsgType.ERROR)
                                or reply.of != MsgType.INFO):
                            continue   # a late reply to a request whose seq happens to equal the nonce
                        if isinstance(reply, wire.Error):
                            raise WireProtocolError(f"board refused INFO: {ErrorCode(reply.code).name}: "
                                                    f"{reply.message}")
                        info = reply.info
                        if info is None:
                            continue
                        self._check_info(info)
                        return info, bool(reply.flags & Flag.RESUMED)
            except (self._serial_mod.SerialException, OSError) as exc:
                raise DeviceGoneError(f"serial port {self.port_url!r} failed during the handshake: {exc}") from None
        raise DeviceGoneError(f"no board answered INFO on {self.port_url!r} after {self.retries + 1} tries; "
                              f"check the port, the baud rate ({self.baud}) and that the board runs the splitpoint "
                              f"bridge firmware")

    def _check_info(self, info: wire.BoardInfo):
        if not info.proto_min <= wire.PROTOCOL_VERSION <= info.proto_max:
            raise WireProtocolError(f"board speaks protocol {info.proto_min}..{info.proto_max}, this host "
                                    f"{wire.PROTOCOL_MIN}..{wire.PROTOCOL_VERSION}")
        if self.expect_board and info.board_id != self.expect_board:
            raise WireProtocolError(f"the board on {self.port_url!r} is {info.board_id!r}, not "
                                    f"{self.expect_board!r}")
        if info.block_size <= 0 or info.block_size & (info.block_size - 1) or info.capacity % info.block_size:
            raise WireProtocolError(f"board reports a bad geometry: capacity {info.capacity}, block {info.block_size}")
        if info.max_transfer < info.block_size or not 1 <= info.window <= wire.MAX_WINDOW:
            raise WireProtocolError(f"board reports max_transfer {info.max_transfer} and window {info.window}")

    def _adopt(self, port, info):
        self.info = info
        self.size = info.capacity
        self.block_size = info.block_size
        self.read_only = bool(info.features & wire.Feature.READ_ONLY)
        self.window = min(self.host_window, info.window)
        self._decoder = wire.frame.FrameDecoder(info.max_transfer + 64)
        self._port = port
        self._up = True

    # ---- link thread: replies, timers, reconnect ----
    def _link_loop(self):
        while not self._closed:
            port = self._port
            if port is None:
                self._reconnect()
                continue
            try:
                data = port.read(max(1, port.in_waiting))
            except Exception as exc:  # pyserial raises SerialException, OSError or TypeError on a vanished fd
                self._link_lost(exc)
                continue
            if data:
                for frm in self._decoder.feed(data):
                    self._on_frame(frm)
                self._decoder.pop_errors()
            self._check_timers()

    def _on_frame(self, frm):
        try:
            msg = wire.decode_message(frm)
        except wire.WireError:
            self.stats["bad_replies"] += 1
            return
        if isinstance(msg, wire.Nak):
            self._on_nak(msg)
            return
        if msg.type not in (MsgType.ACK, MsgType.ERROR):
            self.stats["ignored"] += 1
            return
        with self._cv:
            req = self._out.get(msg.seq)
            if req is None or req.msg.type != msg.of:
                self.stats["duplicate_replies"] += 1
                return
            if isinstance(msg, wire.Error) and msg.code == ErrorCode.WINDOW:
                self.stats["window_errors"] += 1  # resent when its timer runs out
                return
            if isinstance(msg, wire.Error) and msg.code == ErrorCode.NO_SESSION:
                self.stats["no_session"] += 1
                self._drop_link(None)  # the board forgot us: handshake again, then resend
                return
            if msg.flags & Flag.REPLAY:
                self.stats["replayed_replies"] += 1
            self._complete(req, msg, None)

    def _complete(self, req: Pending, reply, error):
        """Finish a request (caller holds self._cv)."""
        if self._out.pop(req.seq, None) is None:
            return
        self._inflight_bytes -= len(req.wire) + req.reply_bytes
        if error is None and isinstance(reply, wire.Error):
            cls = _ERRORS.get(reply.code, WireProtocolError)
            name = ErrorCode(reply.code).name if reply.code in set(ErrorCode) else str(reply.code)
            error = cls(f"board {self.info.board_id if self.info else '?'}: {req.msg.type.name} seq {req.seq} "
                        f"failed: {name}: {reply.message}")
        req.reply = reply
        req.error = error
        req.event.set()
        self._cv.notify_all()

    def _abandon(self, err: DeviceGoneError):
        """Fail every outstanding request with ``err``; until a new handshake, new ones fail at once."""
        self._gone = err
        self._abandoned = True
        self._fail_all(lambda req: err)

    def _fail_all(self, error_factory):
        with self._cv:
            for req in list(self._out.values()):
                self._complete(req, None, error_factory(req))

    def _on_nak(self, nak: wire.Nak):
        self.stats["naks"] += 1
        now = time.monotonic()
        holdoff = self._rto() / 4
        with self._cv:
            highest = nak.received.bit_length()  # seqs up to expected + highest are known to the board
            for req in self._out.values():
                d = wire.seq_after(req.seq, nak.expected)
                if d < 0 or req.queued or req.sent_at is None:
                    continue
                if d > 0 and (d > highest or nak.received >> (d - 1) & 1):
                    continue  # not provably missing, or already buffered on the board
                if now - req.sent_at >= holdoff:
                    self._resend(req)

    def _resend(self, req: Pending):
        """Queue a retransmission (caller holds self._cv)."""
        req.tries += 1
        self.stats["retransmits"] += 1
        req.msg.flags |= Flag.RETRANSMIT
        req.wire = req.msg.encode()
        self._enqueue(req)

    def _check_timers(self):
        now = time.monotonic()
        gone = None
        with self._cv:
            if not self._up:
                return
            rto = self._rto()
            for req in self._out.values():
                if req.attempt_at is None or now - req.attempt_at < rto * self.backoff(req.tries):
                    continue
                if req.tries >= self.retries:
                    gone = req
                    break
                self.stats["timeouts"] += 1
                if req.queued:  # still stuck behind a blocked write: count the try, keep its place
                    req.tries += 1
                    req.attempt_at = now
                else:
                    self._resend(req)
        if gone is not None:
            err = DeviceGoneError(f"board on {self.port_url!r} stopped answering: {gone.msg.type.name} seq "
                                  f"{gone.seq} got no reply after {gone.tries + 1} tries "
                                  f"(gives up within {self.give_up_after:.1f} s)")
            self.stats["gave_up"] += 1
            log.error("%s", err)
            self._abandon(err)
            self._drop_link(None)  # reopen and handshake before anything else is sent

    def _link_lost(self, exc):
        self.stats["link_lost"] += 1
        if self._port is not None:
            log.warning("board on %r: link lost (unplugged?): %s; reconnecting for up to %g s", self.port_url,
                        exc, self.reconnect_timeout)
        self._drop_link(exc)

    def _drop_link(self, exc):
        with self._cv:
            port, self._port, self._up = self._port, None, False
            self._lost_at = time.monotonic()
            for req in self._out.values():
                req.sent_at = None
                req.attempt_at = None
                req.queued = False
        with self._wcv:
            self._wq.clear()
            self._wcv.notify_all()
        if port is not None:
            try:
                port.close()
            except Exception:
                pass

    def _reconnect(self):
        lost_for = time.monotonic() - (self._lost_at or time.monotonic())
        if lost_for > self.reconnect_timeout and self._out:
            err = DeviceGoneError(f"board on {self.port_url!r} has been gone for {lost_for:.1f} s "
                                  f"(reconnect timeout {self.reconnect_timeout} s); plug it back in or restart "
                                  f"the emulator")
            log.error("%s", err)
            self._abandon(err)
        port, _exc = self._open_port()
        if port is None:
            time.sleep(0.05)
            return
        try:
            info, resumed = self._handshake(port)
        except HalError:
            port.close()
            time.sleep(0.05)
            return
        self.stats["reconnects"] += 1
        log.warning("board on %r: reconnected, session %s", self.port_url,
                    "resumed" if resumed else "lost (the board was reset): unanswered requests fail")
        with self._cv:   # no submit may take a seq between the failures and the new numbering
            if not resumed:
                self.incarnation += 1  # a new session: the board may have lost its medium (the pool re-checks it)
                err = BoardResetError(f"board on {self.port_url!r} lost its session (reset or power loss): "
                                      f"this request may or may not have been applied")
                for req in [r for r in self._out.values() if r.written]:
                    self._complete(req, None, err)
                self._renumber(info.next_seq)   # the rest never reached the line: they go in the new session
            self._gone = None
            self._abandoned = False
            self._adopt(port, info)
            for req in self._out.values():  # resend in seq order; the board replays what it already ran
                req.tries += 1
                self._enqueue(req)
            self._cv.notify_all()

    def _renumber(self, first_seq: int) -> None:
        """Number the requests still outstanding (never written) from ``first_seq`` on (caller holds self._cv)."""
        reqs = list(self._out.values())
        self._out.clear()
        seq = first_seq
        for req in reqs:
            req.seq = req.msg.seq = seq
            req.wire = req.msg.encode()
            self._out[seq] = req
            seq = wire.seq_add(seq, 1)
        self.next_seq = seq

    # ---- writer thread ----
    def _enqueue(self, req: Pending):
        req.queued = True
        req.attempt_at = time.monotonic()
        with self._wcv:
            self._wq.append(req)
            self._wcv.notify()

    def _write_loop(self):
        while not self._closed:
            with self._wcv:
                while not self._wq and not self._closed:
                    self._wcv.wait(0.1)
                if self._closed:
                    return
                req = self._wq.popleft()
            port = self._port
            if port is None or not self._up or req.done():
                req.queued = False
                continue
            data = req.wire
            req.written = True   # before the write: a torn write may still reach the board
            try:
                port.write(data)
            except self._serial_mod.SerialTimeoutException:
                self.stats["write_timeouts"] += 1  # the board stopped reading: let the timer decide
                try:
                    port.write(b"\x00")
                except Exception:
                    pass
            except Exception as exc:
                self._link_lost(exc)
                continue
            req.sent_at = time.monotonic()
            req.queued = False
            self.stats["frames_sent"] += 1

    # ---- requests ----
    def submit(self, msg: wire.Message, reply_bytes: int = 0) -> Pending:
        """Send one request within the window (blocks while the window is full); its Pending."""
        with self._cv:
            while True:
                if self._closed:
                    raise DeviceClosedError(f"serial device {self.port_url!r} is closed")
                if self._port is None and self._gone is not None:
                    raise DeviceGoneError(str(self._gone))
                if not self._out or wire.seq_after(self.next_seq, next(iter(self._out))) < self.window:
                    break
                self._cv.wait(0.1)
            msg.seq = self.next_seq
            self.next_seq = wire.seq_add(self.next_seq, 1)
            req = Pending(msg, reply_bytes)
            self._out[req.seq] = req
            self._inflight_bytes += len(req.wire) + reply_bytes
            if self._up:
                self._enqueue(req)
        return req

    def _wait_all(self, reqs: list[Pending]):
        bound = self.give_up_after + self.reconnect_timeout + 5
        first = None
        for req in reqs:
            try:
                req.result(bound)
            except HalError as exc:
                first = first or exc
        if first is not None:
            raise first

    def _chunks(self, offset: int, length: int):
        step = self.info.max_transfer - self.info.max_transfer % self.block_size
        pos = offset
        while pos < offset + length:
            n = min(step, offset + length - pos)
            yield pos, n
            pos += n

    def submit_read(self, offset: int, length: int) -> Pending:
        """Pipelined READ of at most max_transfer bytes; ``result()`` returns the data."""
        self._live()
        check_io(offset, length, self.size, self.block_size)
        if length > self.info.max_transfer:
            raise ValueError(f"submit_read takes at most max_transfer ({self.info.max_transfer}) bytes")
        return self.submit(wire.Read(offset=offset, length=length), reply_bytes=length + 32)

    def submit_write(self, offset: int, data, fua: bool = False) -> Pending:
        """Pipelined WRITE of at most max_transfer bytes."""
        self._writable()
        data = bytes(data)
        check_io(offset, len(data), self.size, self.block_size)
        if len(data) > self.info.max_transfer:
            raise ValueError(f"submit_write takes at most max_transfer ({self.info.max_transfer}) bytes")
        return self.submit(wire.Write(offset=offset, data=data, flags=Flag.FUA if fua else 0))

    def _live(self):
        if self._closed:
            raise DeviceClosedError(f"serial device {self.port_url!r} is closed")

    def _writable(self):
        self._live()
        if self.read_only:
            raise ReadOnlyError(f"board {self.info.board_id} reports a read-only medium")

    def read(self, offset, length):
        self._live()
        check_io(offset, length, self.size, self.block_size)
        reqs = [self.submit(wire.Read(offset=o, length=n), reply_bytes=n + 32) for o, n in self._chunks(offset, length)]
        self._wait_all(reqs)
        return b"".join(r.reply.data for r in reqs)

    def readinto(self, offset, buf):
        dst = memoryview(buf).cast("B")
        dst[:] = self.read(offset, len(dst))

    def write(self, offset, data, fua=False):
        self._writable()
        src = memoryview(data).cast("B")
        check_io(offset, len(src), self.size, self.block_size)
        flags = Flag.FUA if fua else 0
        reqs = [self.submit(wire.Write(offset=o, data=bytes(src[o - offset:o - offset + n]), flags=flags))
                for o, n in self._chunks(offset, len(src))]
        self._wait_all(reqs)

    def flush(self):
        self._live()
        self._wait_all([self.submit(wire.Flush())])

    def trim(self, offset, length):
        self._writable()
        check_io(offset, length, self.size, self.block_size)
        self._wait_all([self.submit(wire.Trim(offset=offset, length=length))])

    def write_zeroes(self, offset, length, fua=False):
        self._writable()
        check_io(offset, length, self.size, self.block_size)
        flags = Flag.ZEROES | (Flag.FUA if fua else 0)
        self._wait_all([self.submit(wire.Trim(offset=offset, length=length, flags=flags))])

    def trigger(self, trigger_id: int, label: str = "") -> None:
        """Send a TRIGGER in sequence with the writes before it (a device link's mirror cut)."""
        self._live()
        self._wait_all([self.submit(wire.Trigger(id=trigger_id, label=label))])

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._fail_all(lambda req: DeviceClosedError(f"serial device {self.port_url!r} closed with seq {req.seq} "
                                                     f"unanswered"))
        with self._wcv:
            self._wcv.notify_all()
        for t in (self._reader, self._writer):
            if t is not threading.current_thread():
                t.join(timeout=2)
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                pass

    @property
    def link_down(self) -> bool:
        """True from a lost link until the next handshake (the board unplugged, restarting or silent)."""
        return not self._up and not self._closed

    #: the host's counters a status report shows per device (retransmission, loss, reconnects)
    LINK_COUNTERS = ("frames_sent", "retransmits", "naks", "timeouts", "reconnects", "link_lost", "gave_up",
                     "no_session", "window_errors", "duplicate_replies", "replayed_replies", "bad_replies",
                     "write_timeouts")

    def link_status(self) -> dict:
        """The link's state and the host's counters, for ``status``."""
        doc = {name: self.stats.get(name, 0) for name in self.LINK_COUNTERS}
        doc.update({"up": self._up, "outstanding": len(self._out), "window": self.window,
                    "gone": None if self._gone is None else str(self._gone)})
        return doc

    def describe(self):
        board = f"{self.info.board_id} " if self.info else ""
        return (f"serial {board}on {self.port_url}: {self.size} bytes, block {self.block_size}, "
                f"window {self.window}")
