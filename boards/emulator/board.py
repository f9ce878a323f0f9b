"""An emulated storage bridge board: the wire protocol behind a pty linked at PATH.

Owns ``Emulator``: the pty whose slave is linked at PATH, the link rate
modelled in software, fault filters on each direction, unplug/replug, and a
control-channel pty (``control``). The session is the shared engine's
(``splitpoint.hal.wire.session.DeviceSession``) inside ``BoardEngine``
(``engine``); this module only moves its bytes. It never decides what a
TRIGGER means: it forwards TRIGGERs to the listener it is given.
"""
from __future__ import annotations

import collections
import os
import select
import threading
import time

from splitpoint.boards.emulator import control
from splitpoint.boards.emulator.engine import BoardEngine
from splitpoint.boards.emulator.pty import Pty
from splitpoint.hal import wire
from splitpoint.hal.contract import BlockDevice
from splitpoint.hal.filters import frame_chain
from splitpoint.hal.wire import Feature, Flag, MsgType


PACE_SLACK = 0.002  # seconds a link's virtual clock may run ahead before the emulator waits

_FEATURES = {"flush": Feature.FLUSH, "trim": Feature.TRIM, "fua": Feature.FUA, "trigger": Feature.TRIGGER,
             "read-only": Feature.READ_ONLY, "control": Feature.CONTROL}


def _sequenced_reply(msg) -> bool:
    """An ACK or ERROR answering a sequenced request (not INFO, whose seq is a nonce; not a NAK)."""
    return msg.type in (MsgType.ACK, MsgType.ERROR) and msg.of != MsgType.INFO


class Emulator:
    """An emulated bridge board serving the wire protocol on a pty linked at ``link``.

    ``rate`` (bytes/s, 0 = unlimited) models the link: bytes from the host are
    taken no faster than that, and replies go out no faster than that.
    ``faults`` is a hal.filters spec applied to the link's frames.
    ``trigger_listener(label) -> (id, seq)`` receives control-channel TRIGGERs;
    ``on_trigger(id, label, seq)`` sees wire TRIGGERs in seq order.
    """

    def __init__(self, board, link: str, device: BlockDevice, control_link: str | None = None,
                 faults: str | None = None, rate: int | None = None, seed: int | None = None,
                 trigger_listener=None, on_trigger=None):
        self.board = board
        self.link_path = os.path.abspath(link)
        self.control_path = os.path.abspath(control_link) if control_link else None
        self.device = device
        self.rate = board.link_rate if rate is None else rate
        if self.rate < 0:
            raise ValueError(f"link rate {self.rate} is negative; bytes per second, or 0 for unlimited")
        self.trigger_listener = trigger_listener
        self.triggers: list[tuple[int, str, int]] = []
        self._user_on_trigger = on_trigger
        features = 0
        for name in board.features:
            features |= _FEATURES[name]
        self.engine = BoardEngine(device, board.id, board.window, board.max_transfer, features,
                                  wire.pack_version(board.firmware), self._wire_trigger)
        self.rx_chain = frame_chain(faults, "rx", seed, link=self)
        self.tx_chain = frame_chain(faults, "tx", seed, link=self)
        self.decoder = self.engine.decoder  # the session's: the io path only splits at delimiters for the filters
        self.stats = self.engine.stats
        self.plug_count = 0
        self._lock = threading.RLock()
        self._plug_changed = threading.Condition(self._lock)
        self._pty: Pty | None = None
        self._retired: list[Pty] = []  # unplugged ptys the io thread has still to close
        self._generation = 0  # bumped at every unplug, so stale replies never reach a new link
        self._ctl: Pty | None = None
        self._want_plugged = True
        self._replug_at: float | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._threads: list[threading.Thread] = []
        self._rxq: collections.deque = collections.deque()  # (arrival time, bytes) or (0, None): link changed
        self._rx_cv = threading.Condition()
        self._txq: collections.deque = collections.deque()  # (ready time, generation, seq or None, bytes)
        self._tx_cv = threading.Condition()
        self._tx_waiting: collections.Counter = collections.Counter()  # (generation, seq) of replies not yet sent
        self._rx_split = bytearray()
        self._rx_clock = 0.0
        self._tx_clock = 0.0
        self._io_thread = None
        self._hung = False

    # ---- lifecycle ----
    def start(self) -> "Emulator":
        with self._lock:
            self._pty = Pty(self.link_path)
            self.plug_count += 1
        if self.control_path:
            self._ctl = Pty(self.control_path)
        name = f"emu-{self.board.id}"
        self._threads = [threading.Thread(target=self._io_loop, name=f"{name}-io", daemon=True),
                         threading.Thread(target=self._data_loop, name=name, daemon=True),
                         threading.Thread(target=self._tx_loop, name=f"{name}-tx", daemon=True)]
        self._io_thread = self._threads[0]
        if self._ctl:
            self._threads.append(threading.Thread(target=control.serve, args=(self, self._ctl.master, self._wake_r, self._stop),
                                                  name=f"{name}-ctl", daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        with self._rx_cv:
            self._rx_cv.notify_all()
        with self._tx_cv:
            self._tx_cv.notify_all()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            for pty in self._retired + ([self._pty] if self._pty else []):
                pty.close()
            self._retired.clear()
            self._pty = None
        if self._ctl:
            self._ctl.close()
            self._ctl = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _poke(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # ---- unplug / replug (also used by the disconnect filter) ----
    @property
    def plugged(self) -> bool:
        return self._pty is not None

    def hang(self, hung: bool = True) -> None:
        """The board's firmware hangs (or recovers): it stops reading its link, so the host's
        writes back up once the pty's buffer is full, as behind a USB device that NAKs."""
        self._hung = hung
        self._poke()

    @property
    def tty_name(self) -> str | None:
        """The pty device the link path points at now (None while unplugged)."""
        pty = self._pty
        return pty.name if pty else None

    def unplug(self) -> None:
        """Take the link away: the host's port hangs up and PATH disappears."""
        self._set_plugged(False)

    def replug(self) -> None:
        """A new pty appears at PATH (the board keeps its session, as a self-powered one would)."""
        self._set_plugged(True)

    def replug_after(self, seconds: float) -> None:
        with self._lock:
            self._replug_at = time.monotonic() + seconds
        self._poke()

    def _set_plugged(self, want: bool):
        with self._lock:
            self._want_plugged = want
            self._replug_at = None
            self._apply_plug()  # the link path changes now; the io thread closes the old fds

    def _apply_plug(self):
        """Bring the pty in line with _want_plugged (caller holds self._lock)."""
        if self._want_plugged and self._pty is None:
            self._pty = Pty(self.link_path)
            self.plug_count += 1
            with self._rx_cv:
                self._rxq.append((0.0, None))  # the data thread drops any torn frame of the old link
                self._rx_cv.notify()
        elif not self._want_plugged and self._pty is not None:
            pty, self._pty = self._pty, None
            self._generation += 1
            try:
                os.unlink(pty.path)
            except OSError:
                pass
            os.close(pty.slave)  # with the master closed below, the host's port hangs up
            pty.slave = -1
            self._retired.append(pty)
        self._plug_changed.notify_all()
        self._poke()

    # ---- data path: io thread (reads), data thread (protocol), tx thread (paced writes) ----
    def _wire_trigger(self, trigger_id, label, seq):
        self.triggers.append((trigger_id, label, seq))
        if self._user_on_trigger is not None:
            self._user_on_trigger(trigger_id, label, seq)

    def _io_loop(self):
        """Read the link as bytes arrive, stamping each chunk with its arrival time."""
        while not self._stop.is_set():
            with self._lock:
                if self._replug_at is not None and time.monotonic() >= self._replug_at:
                    self._want_plugged = True
                    self._replug_at = None
                    self._apply_plug()
                retired, self._retired = self._retired, []
                pty = self._pty
            for old in retired:
                old.close()
            fds = [self._wake_r] + ([pty.master] if pty and not self._hung else [])
            try:
                ready, _, _ = select.select(fds, [], [], 0.05)
            except (OSError, ValueError):
                continue
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            if pty is None or pty.master not in ready:
                continue
            try:
                data = os.read(pty.master, 65536)
            except OSError:  # EAGAIN, or EIO while no one has the slave open: harmless on a pty
                continue
            if data:
                with self._rx_cv:
                    self._rxq.append((time.monotonic(), data))
                    self._rx_cv.notify()

    def _data_loop(self):
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.05
            for due in (self.rx_chain.next_due(), self.tx_chain.next_due()):
                if due is not None:
                    timeout = max(0.0, min(timeout, due - now))
            with self._rx_cv:
                if not self._rxq:
                    self._rx_cv.wait(timeout)
                item = self._rxq.popleft() if self._rxq else None
            if item is not None:
                arrived, data = item
                if data is None:
                    self.engine.protocol.reset_link()
                    self._rx_split.clear()
                else:
                    if self.rate:  # the chunk counts as received when its last byte crossed the link
                        self._rx_clock = max(self._rx_clock, arrived) + len(data) / self.rate
                        self._wait_until(self._rx_clock)
                    self._on_bytes(data)
            now = time.monotonic()
            for f in self.rx_chain.poll(now):
                self._deliver(f)
            for f in self.tx_chain.poll(now):
                self._transmit(f)

    def _wait_until(self, t: float):
        """Sleep until t once it is PACE_SLACK ahead; the virtual clocks never drift, so skipping
        short waits keeps sleep overshoot from eating into the link rate."""
        ahead = t - time.monotonic()
        if ahead > PACE_SLACK:
            time.sleep(ahead)

    def _on_bytes(self, data: bytes):
        buf = self._rx_split
        buf += data
        start = 0
        while True:
            end = buf.find(0, start)
            if end < 0:
                break
            piece = bytes(buf[start:end + 1])
            start = end + 1
            for f in self.rx_chain.push(piece, time.monotonic()) if self.rx_chain.filters else [piece]:
                self._deliver(f)
        del buf[:start]
        if len(buf) > self.decoder.max_wire:  # no delimiter in sight: let the decoder count and drop it
            self._deliver(bytes(buf))
            buf.clear()

    def _deliver(self, wire_bytes: bytes):
        for msg in self.engine.feed(wire_bytes):
            if msg.flags & Flag.REPLAY and self._tx_waiting[(self._generation, msg.seq)]:
                # an earlier copy of this reply has not even left yet: it answers the duplicate too, and a
                # second copy would only lengthen the queue every later reply waits in (a host that
                # retransmits because replies are late would otherwise be sent ever more replays)
                self.stats["replays_still_queued"] += 1
                continue
            out = msg.encode()
            for f in self.tx_chain.push(out, time.monotonic()) if self.tx_chain.filters else [out]:
                self._transmit(f, msg.seq if f is out and _sequenced_reply(msg) else None)

    def _transmit(self, data: bytes, seq: int | None = None):
        """Queue bytes for the host (the reply to ``seq``, if known); the tx thread sends them at the link rate."""
        with self._tx_cv:
            self._txq.append((time.monotonic(), self._generation, seq, data))
            if seq is not None:
                self._tx_waiting[(self._generation, seq)] += 1
            self._tx_cv.notify()

    def _tx_loop(self):
        while not self._stop.is_set():
            with self._tx_cv:
                if not self._txq:
                    self._tx_cv.wait(0.1)
                    continue
                item = self._txq.popleft()
            self._tx_one(item)

    def _tx_one(self, item):
        """Send one queued frame; from then on a duplicate of its request is answered again."""
        ready, generation, seq, data = item
        try:
            self._send(ready, generation, data)
        finally:
            if seq is not None:
                with self._tx_cv:
                    key = (generation, seq)
                    self._tx_waiting[key] -= 1
                    if not self._tx_waiting[key]:
                        del self._tx_waiting[key]

    def _send(self, ready: float, generation: int, data: bytes):
        """Write one queued frame to the link once the link rate allows, unless it was unplugged since."""
        if self.rate:  # the bytes reach the host when their transmission would end
            self._tx_clock = max(self._tx_clock, ready) + len(data) / self.rate
            self._wait_until(self._tx_clock)
        with self._lock:
            pty = self._pty if generation == self._generation else None
            master = pty.master if pty else -1
        if master < 0:
            return  # unplugged since: the bytes go nowhere
        view = memoryview(data)
        deadline = time.monotonic() + 1.0
        while view and not self._stop.is_set():
            try:
                view = view[os.write(master, view):]
            except BlockingIOError:
                if time.monotonic() > deadline:  # the host stopped reading: the rest is lost on the line
                    self.stats["tx_dropped_bytes"] += len(view)
                    break
                try:
                    select.select([], [master], [], 0.05)
                except (OSError, ValueError):
                    break
            except OSError:
                break

    # ---- control channel (control.py) ----
    def status(self) -> dict:
        e = self.engine
        return {"board": self.board.id, "plugged": self.plugged, "session": e.session, "expected": e.expected,
                "link_rate": self.rate, "triggers": len(self.triggers),
                "rejected_frames": self.decoder.rejected, "garbage_bytes": self.decoder.garbage_bytes,
                "stats": dict(e.stats), "faults": {"rx": self.rx_chain.counts(), "tx": self.tx_chain.counts()}}

    def control_line(self, line: str) -> str | None:
        """The one-line answer to one control-channel line (None for a blank line: no answer)."""
        return control.answer(self, line)


def open_storage(url: str | None, board) -> BlockDevice:
    """The emulator's medium: ``url`` (any HAL URL) or a RAM disk of the board's capacity."""
    from splitpoint.hal import open_device

    if url:
        return open_device(url)
    return open_device(f"ram://{board.id}?size={board.capacity}&block={board.block_size}")

