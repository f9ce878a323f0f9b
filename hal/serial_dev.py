# URL grammar:  serial://PORT[?baud=N][&rate=BYTES_PER_S][&window=N][&rto=DURATION][&retries=N][&reconnect=DURATION]
#   PORT is a device path (serial:///dev/ttyACM0) or any pyserial URL (serial://socket://127.0.0.1:7000,
#   serial://hwgrep://2E8A:000A, serial://rfc2217://host:port); the options after the first '?' are ours.
"""The ``serial://`` backend: a storage bridge board on any pyserial port, over the wire protocol.

A thin transport under the session engine (``splitpoint.hal.wire.session.HostSession``,
which owns the handshake, sequence numbers, the window, retransmission, NAKs and
the give-up bounds). This module owns the pyserial port, a link thread that reads
the port, hands the bytes to the session, ticks its timers and reopens the port
after an unplug, and a writer thread that owns the port's write side, so no
caller and no timer ever blocks behind a full line. It never decides when a
request is sent again: the session does.
"""
from __future__ import annotations

import logging
import threading
import time

from splitpoint.hal import wire
from splitpoint.hal.contract import BadURLError, BlockDevice, DeviceClosedError, DeviceGoneError, HalError
from splitpoint.hal.contract import ReadOnlyError, check_io
from splitpoint.hal.url import LINK_OPTIONS, link_options, split_port_url
from splitpoint.hal.wire import Flag
from splitpoint.hal.wire.session import (DEFAULT_RECONNECT, DEFAULT_RETRIES, DEFAULT_RTO, DOWN, HANDSHAKING,
                                         HOST_WINDOW, UP, BoardIOError, BoardResetError, HostSession, Request,
                                         WireProtocolError, backoff)

log = logging.getLogger("splitpoint.hal.serial")

GRAMMAR = ("serial://PORT[?baud=N][&rate=BYTES_PER_S][&window=N][&rto=DURATION][&retries=N]"
           "[&reconnect=DURATION]")
OPTIONS = LINK_OPTIONS
TICK = 0.02  # link-thread poll interval: how late a timer may be seen

__all__ = ["SerialDevice", "Pending", "WireProtocolError", "BoardIOError", "BoardResetError", "GRAMMAR", "OPTIONS"]


class Pending(Request):
    """One request in flight; ``result()`` waits for its reply."""

    __slots__ = ("event",)

    def __init__(self, msg: wire.Message, reply_bytes: int = 0):
        super().__init__(msg, reply_bytes)
        self.event = threading.Event()

    def done(self) -> bool:
        return self.event.is_set()

    def result(self, timeout: float | None = None):
        """The ACK's data (READ) or None; raises the request's error."""
        if not self.event.wait(timeout):
            raise DeviceGoneError(f"request seq {self.seq} ({self.msg.type.name}) not answered in {timeout} s")
        if self.error is not None:
            raise self.error
        return self.data


class SerialDevice(BlockDevice):
    """A storage bridge board reached through pyserial."""

    scheme = "serial"
    #: every op waits for a link (up to the reconnect timeout): a controller runs it off its loop thread
    waits_on_link = True

    def __init__(self, port: str, baud: int = 115200, rate: int | None = None, window: int = HOST_WINDOW,
                 rto: float = DEFAULT_RTO, retries: int = DEFAULT_RETRIES, reconnect: float = DEFAULT_RECONNECT,
                 expect_board: str | None = None, serial_factory=None, target: str = "", origin: str = ""):
        import serial  # pyserial, imported only when a serial backend is used

        self.port_url = port
        self.baud = baud
        self._serial_mod = serial
        self._factory = serial_factory or (lambda: serial.serial_for_url(
            port, baudrate=baud, timeout=TICK, write_timeout=max(1.0, rto * 4)))
        self._cv = threading.Condition()  # guards the session and _port; every state change notifies it
        self._session = HostSession(port, window=window, rto=rto, rate=rate, retries=retries, reconnect=reconnect,
                                    expect_board=expect_board, on_complete=self._finished, request_factory=Pending,
                                    poll_interval=TICK, target=target, origin=origin,
                                    no_answer_hint=f"check the port, the baud rate ({baud}) and that the board "
                                                   f"runs the splitpoint bridge firmware")
        self.stats = self._session.stats
        self._port = None  # set once a handshake succeeded on it; the writer writes only then
        self._closed = False
        self._open_first()
        self._reader = threading.Thread(target=self._link_loop, name=f"serial-link {port}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"serial-write {port}", daemon=True)
        self._reader.start()
        self._writer.start()

    # ---- URL ----
    @classmethod
    def from_url(cls, url: str) -> "SerialDevice":
        port, opts = split_port_url(url, "serial", GRAMMAR, OPTIONS)
        if not port:
            raise BadURLError(f"{url!r} names no port; grammar: {GRAMMAR}")
        return cls(port, **link_options(opts, GRAMMAR, wire.MAX_WINDOW))

    # ---- the session's view ----
    info = property(lambda self: self._session.info, doc="The board's INFO (None before the first handshake).")
    window = property(lambda self: self._session.window, doc="Requests in flight at most: min(host, board).")
    next_seq = property(lambda self: self._session.next_seq, doc="The seq the next request gets.")
    incarnation = property(lambda self: self._session.incarnation,
                           doc="+1 each time the board lost its session (and maybe its medium).")
    rate = property(lambda self: self._session.rate, doc="Bytes/s the timers assume for the link.")
    base_rto = property(lambda self: self._session.base_rto)
    retries = property(lambda self: self._session.retries)
    reconnect_timeout = property(lambda self: self._session.reconnect_timeout)
    host_window = property(lambda self: self._session.host_window)
    expect_board = property(lambda self: self._session.expect_board)
    max_rto = property(lambda self: self._session.max_rto, doc="The retransmission timeout with a full window.")
    give_up_after = property(lambda self: self._session.give_up_after,
                             doc="Longest a request waits on a board that stopped answering.")
    backoff = staticmethod(backoff)

    # ---- opening and handshakes ----
    def _open_port(self):
        try:
            port = self._factory()
        except (self._serial_mod.SerialException, OSError, ValueError) as exc:
            return None, exc
        return port, None

    def _open_first(self):
        deadline = time.monotonic() + self._session.reconnect_timeout
        while True:
            port, exc = self._open_port()
            if port is not None:
                break
            if time.monotonic() >= deadline:
                raise DeviceGoneError(f"cannot open serial port {self.port_url!r}: {exc}; is the board plugged in "
                                      f"(see `splitpoint boards`) or the emulator running?")
            time.sleep(0.05)
        try:
            self._handshake(port)
        except HalError:
            port.close()
            raise

    def _handshake(self, port) -> None:
        """Run the session's INFO exchange on ``port`` before the writer may use it; raises why it failed."""
        s = self._session
        try:
            port.reset_input_buffer()
            with self._cv:
                s.connect(time.monotonic())
            while True:
                with self._cv:
                    if s.state != HANDSHAKING:
                        break
                    hello = s.next_frame(time.monotonic())
                if hello:
                    port.write(hello)
                data = port.read(max(1, port.in_waiting))
                with self._cv:
                    now = time.monotonic()
                    s.feed(data, now)
                    s.tick(now)
                    if s.state == UP:
                        self._port = port  # in the same lock: the writer sees the port with the resends
                        self._cv.notify_all()
        except (self._serial_mod.SerialException, OSError) as exc:
            with self._cv:
                s.link_lost(time.monotonic())
            raise DeviceGoneError(f"serial port {self.port_url!r} failed during the handshake: {exc}") from None
        if s.state != UP:
            raise s.handshake_error or DeviceGoneError(f"handshake on {self.port_url!r} failed")

    # ---- link thread: bytes in, timers, reconnect ----
    def _link_loop(self):
        s = self._session
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
            with self._cv:
                now = time.monotonic()
                if data:
                    s.feed(data, now)
                s.tick(now)
                down = s.state == DOWN  # the board forgot us, or the session gave up: a new link first
                self._cv.notify_all()
            if down:
                self._drop_port()

    def _link_lost(self, exc):
        with self._cv:
            was_up = self._session.up
            self._session.link_lost(time.monotonic())
            self._cv.notify_all()
        if was_up:
            log.warning("board on %r: link lost (unplugged?): %s; reconnecting for up to %g s", self.port_url,
                        exc, self._session.reconnect_timeout)
        self._drop_port()

    def _drop_port(self):
        with self._cv:
            port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except Exception:
                pass

    def _reconnect(self):
        with self._cv:
            self._session.tick(time.monotonic())  # a link gone too long fails its requests
            self._cv.notify_all()
        port, _exc = self._open_port()
        if port is None:
            time.sleep(0.05)
            return
        try:
            self._handshake(port)
        except HalError:
            port.close()
            time.sleep(0.05)

    # ---- writer thread ----
    def _write_loop(self):
        s = self._session
        while not self._closed:
            with self._cv:
                port = self._port
                data = s.next_frame(time.monotonic()) if port is not None and s.up else None
                if data is None:
                    self._cv.wait(0.1)
                    continue
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

    # ---- requests ----
    def _finished(self, req: Pending) -> None:
        """The session finished ``req`` (called with self._cv held)."""
        req.event.set()
        self._cv.notify_all()

    def submit(self, msg: wire.Message, reply_bytes: int = 0) -> Pending:
        """Send one request within the window (blocks while the window is full); its Pending."""
        s = self._session
        with self._cv:
            while True:
                if self._closed:
                    raise DeviceClosedError(f"serial device {self.port_url!r} is closed")
                if not s.up and s.gone is not None:
                    raise DeviceGoneError(str(s.gone))
                if s.can_submit():
                    break
                self._cv.wait(0.1)
            req = s.submit(msg, reply_bytes, time.monotonic())
            self._cv.notify_all()
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

    # ---- the BlockDevice contract (geometry from the board's INFO) ----
    size = property(lambda self: self.info.capacity)
    block_size = property(lambda self: self.info.block_size)
    read_only = property(lambda self: bool(self.info.features & wire.Feature.READ_ONLY))

    def read(self, offset, length):
        self._live()
        check_io(offset, length, self.size, self.block_size)
        reqs = [self.submit(wire.Read(offset=o, length=n), reply_bytes=n + 32) for o, n in self._chunks(offset, length)]
        self._wait_all(reqs)
        return b"".join(r.data for r in reqs)

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

    @property
    def cuts_itself(self) -> bool:
        """The board records a TRIGGER frame (INFO's TRIGGER feature): the mirror path forwards its cuts."""
        return self.info is not None and bool(self.info.features & wire.Feature.TRIGGER)

    def trigger(self, trigger_id: int, label: str = "", missed: bool = False) -> None:
        """Send a TRIGGER in sequence with the writes before it (a device link's mirror cut); ``missed``:
        this point could not be cut exactly upstream, so the far side records it and cuts nothing."""
        self._live()
        flags = Flag.MISSED if missed else 0
        self._wait_all([self.submit(wire.Trigger(id=trigger_id, label=label, flags=flags))])
        if not missed and self.resumes_from_cuts:   # every request before it is applied there: a resync point
            self.acked_trigger = (trigger_id, self.info.board_id)

    #: (id, the far side's board id then) of the newest exact TRIGGER the far side acknowledged, or None
    acked_trigger = None
    #: the far side's board id changes whenever it may have lost its bytes (a device link's listener: each
    #: process has its own), so an acknowledged cut is a point to resync from; a board's id never changes
    resumes_from_cuts = False

    def close(self):
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._session.fail_all(lambda req: DeviceClosedError(f"serial device {self.port_url!r} closed with seq "
                                                                 f"{req.seq} unanswered"))
            self._session.close()
            self._cv.notify_all()
        for t in (self._reader, self._writer):
            if t is not threading.current_thread():
                t.join(timeout=2)
        self._drop_port()

    @property
    def link_down(self) -> bool:
        """True from a lost link until the next handshake (the board unplugged, restarting or silent)."""
        return not self._session.up and not self._closed

    #: the host's counters a status report shows per device (retransmission, loss, reconnects)
    LINK_COUNTERS = ("frames_sent", "retransmits", "naks", "timeouts", "reconnects", "link_lost", "gave_up",
                     "no_session", "window_errors", "duplicate_replies", "replayed_replies", "bad_replies",
                     "write_timeouts")

    def link_status(self) -> dict:
        """The link's state and the host's counters, for ``status``."""
        s = self._session
        doc = {name: self.stats.get(name, 0) for name in self.LINK_COUNTERS}
        doc.update({"up": s.up, "outstanding": len(s.out), "window": s.window,
                    "gone": None if s.gone is None else str(s.gone)})
        return doc

    def describe(self):
        board = f"{self.info.board_id} " if self.info else ""
        return (f"serial {board}on {self.port_url}: {self.size} bytes, block {self.block_size}, "
                f"window {self.window}")
