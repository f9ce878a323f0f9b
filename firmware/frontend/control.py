"""The serial control channel: one line each way, separate from the data path.

The line protocol is ``firmware/triggers.py``'s (``parse_control_line``, ``COMMANDS``):

    TRIGGER [ON <lun>] [label]  ->  OK <id> seq=<n>   (sent only once the TRIGGER has split the mirror;
                                    `` warning=...`` follows when it left the LUN without a consistent backup)
    STATUS                      ->  one line of JSON   (the controller's status())
    VERIFY [lun] [id]           ->  one line of JSON: a list of {trigger_id, member, ok, expected,
                                    actual, bad_regions, note}, one per consistent backup (or the one named)
    PING                        ->  PONG
    PIN <backup>, UNPIN <backup> -> OK   (the backup as exports name it: <lun>.t<id>, or
                                    <lun>.latest, the newest consistent backup when the line is handled)
    RESTORE <backup> [ON <lun>] ->  OK restore <lun> seq=<n>   (queued in sequence like a TRIGGER; answered
                                    once the LUN holds the backup's bytes; without ON, the backup's own LUN)
    anything else               ->  ERR <reason>

Lines end with LF (CR LF and CR are accepted; blank lines are skipped).

The channel is a pseudo-terminal that ``serve`` creates (its slave path is printed and can be
linked elsewhere), or any pyserial URL or device. A TRIGGER from here is queued on the
controller like every other request; PIN and UNPIN are the controller's own calls, made on the
loop thread (its owner). This module never changes controller state itself.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import tty

import serial

from splitpoint.firmware import triggers
from splitpoint.firmware.errors import ControllerError
from splitpoint.firmware.requests import Op
from splitpoint.firmware.triggers import LINE_MAX

log = logging.getLogger("splitpoint.control")


class ControlError(Exception):
    """A control-channel exchange failed (no answer, a closed line, or an ERR reply)."""


class ControlProtocol:
    """Parses control lines and answers them; the transport gives bytes in and takes bytes out."""

    def __init__(self, frontend, write, lun=None):
        self.fe = frontend
        self.ctl = frontend.ctl
        self.write_bytes = write
        self.lun = lun if lun is not None else frontend.exports.default_lun
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data: bytes):
        """Bytes from the line; every complete line is handled in order."""
        buf = self._buf
        buf += data
        while True:
            lf, cr = buf.find(b"\n"), buf.find(b"\r")
            cut = lf if cr < 0 else (cr if lf < 0 else min(lf, cr))
            if cut < 0:
                if len(buf) > LINE_MAX:
                    buf.clear()
                    if not self._skipping:
                        self._skipping = True
                        self.reply(f"ERR line longer than {LINE_MAX} bytes")
                return
            line = bytes(buf[:cut])
            del buf[:cut + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > LINE_MAX:
                self.reply(f"ERR line longer than {LINE_MAX} bytes")
                continue
            self.handle(line)

    def reply(self, line: str):
        self.write_bytes(line.encode("utf-8", "replace") + b"\n")

    def handle(self, raw: bytes):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.reply("ERR line is not UTF-8")
            return
        try:
            command = triggers.parse_control_line(line)
        except triggers.ControlSyntaxError as exc:
            self.reply(triggers.reply_error(exc))
            return
        if command is None:
            return
        if isinstance(command, triggers.PingCommand):
            self.reply("PONG")
        elif isinstance(command, triggers.StatusCommand):
            try:
                status = self.ctl.status()
            except Exception as exc:  # answered on the line, never raised into the loop
                self.reply(triggers.reply_error(f"status failed: {exc}"))
                return
            self.reply(triggers.reply_json(status))
        elif isinstance(command, triggers.TriggerCommand):
            self._trigger(command)
        elif isinstance(command, triggers.VerifyCommand):
            self._verify(command)
        elif isinstance(command, (triggers.PinCommand, triggers.UnpinCommand)):
            self._pin(command)
        elif isinstance(command, triggers.RestoreCommand):
            self._restore(command)
        else:
            self.reply(triggers.reply_unsupported(command))

    def _named_lun(self, name):
        """The LUN called ``name`` (None: this channel's), or None after answering ERR."""
        if name is None:
            return self.lun
        lun = self.ctl.luns.get(name)
        if lun is None:
            self.reply(triggers.reply_no_target(name, self.ctl.luns, self.ctl.groups))
        return lun

    def _trigger(self, command):
        group = self.ctl.groups.get(command.target) if command.target is not None else None
        if group is not None:
            if self.fe.stopping:
                self.reply("ERR server is shutting down")
                return
            self.fe.trigger_group(group, command.label, self._group_triggered)
            return
        lun = self._named_lun(command.target)
        if lun is None:
            return
        if self.fe.stopping:
            self.reply("ERR server is shutting down")
            return
        self.fe.submit(None, lun, Op.TRIGGER, 0, 0, None, 0, command.label, self._triggered)

    def _group_triggered(self, cut):
        if isinstance(cut, Exception):
            self.reply(triggers.reply_error(f"trigger failed: {cut}"))
            return
        self.reply(triggers.reply_group_triggered(cut.id, cut.group, cut.seqs()))

    def _restore(self, command):
        lun = self._named_lun(triggers.restore_lun_name(command))
        if lun is None:
            return
        if self.fe.stopping:
            self.reply("ERR server is shutting down")
            return
        self.fe.submit(None, lun, Op.RESTORE, 0, 0, None, 0, command.backup, self._restored)

    def _restored(self, completion):
        if completion.error is not None:
            self.reply(triggers.reply_error(f"restore failed: {completion.error}"))
            return
        self.reply(triggers.reply_restored(completion.data.lun, completion.data.seq))

    def _pin(self, command):
        # this runs on the loop thread, the controller's owner: the pin is set between two polls
        set_pin = self.ctl.pin if isinstance(command, triggers.PinCommand) else self.ctl.unpin
        try:
            members = set_pin(command.backup)
        except ControllerError as exc:
            self.reply(triggers.reply_error(exc))
            return
        self.reply(triggers.reply_pinned(members))

    def _verify(self, command):
        lun = self._named_lun(command.name)
        if lun is None:
            return
        # Frozen copies never change, and Controller.verify is safe off the owner thread (it
        # re-checks each member's generation), so a long digest never stalls the data path.
        task = asyncio.ensure_future(asyncio.to_thread(self.ctl.verify, lun, command.trigger_id))
        task.add_done_callback(self._verified)

    def _verified(self, task):
        exc = task.exception()
        if exc is not None:
            self.reply(triggers.reply_error(f"verify failed: {exc}"))
            return
        self.reply(triggers.reply_verified(task.result()))

    def _triggered(self, completion):
        if completion.error is not None:
            self.reply(triggers.reply_error(f"trigger failed: {completion.error}"))
            return
        result = completion.trigger
        self.reply(triggers.reply_triggered(result.id, result.seq, result.warning))


class PtyControl:
    """A new pseudo-terminal; clients open its slave path (or a link to it) with pyserial."""

    def __init__(self, frontend, link: str | None = None):
        self.loop = frontend.loop
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)            # no echo, no CR/LF translation: bytes pass unchanged
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.link = None
        if link:
            if os.path.lexists(link):
                if not os.path.islink(link):
                    raise FileExistsError(f"{link} exists and is not a symlink; choose another --control-link")
                os.unlink(link)
            os.symlink(self.path, link)
            self.link = link
        self.protocol = ControlProtocol(frontend, self._write)
        self.loop.add_reader(self.master, self._readable)

    def _readable(self):
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # the slave stays open here, so this is not a hang-up
            log.warning("control pty read failed: %s", exc)
            return
        if data:
            self.protocol.feed(data)

    def _write(self, data: bytes):
        try:
            os.write(self.master, data)
        except BlockingIOError:
            log.warning("control pty is full (nobody reads %s); reply dropped", self.path)

    def close(self):
        self.loop.remove_reader(self.master)
        os.close(self.master)
        os.close(self._slave)
        if self.link and os.path.islink(self.link) and os.readlink(self.link) == self.path:
            os.unlink(self.link)


class SerialControl:
    """Any pyserial URL or device; a reader thread hands bytes to the loop thread."""

    def __init__(self, frontend, url: str):
        self.loop = frontend.loop
        self.path = url
        try:
            self.port = serial.serial_for_url(url, timeout=0.1, write_timeout=1.0)
        except (serial.SerialException, ValueError) as exc:
            raise ControlError(f"cannot open control channel {url!r}: {exc}") from exc
        self.protocol = ControlProtocol(frontend, self._write)
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="splitpoint-control", daemon=True)
        self._reader.start()

    def _read_loop(self):
        while not self._stop.is_set():
            try:
                data = self.port.read(max(1, self.port.in_waiting))
            except (serial.SerialException, OSError, TypeError) as exc:
                if not self._stop.is_set():
                    log.warning("control channel %s failed: %s", self.path, exc)
                return
            if data:
                self.loop.call_soon_threadsafe(self.protocol.feed, data)

    def _write(self, data: bytes):
        try:
            self.port.write(data)
        except (serial.SerialException, OSError) as exc:
            log.warning("control channel %s: reply not sent: %s", self.path, exc)

    def close(self):
        self._stop.set()
        self._reader.join(timeout=2.0)
        self.port.close()


def open_channel(frontend, url: str | None = None, link: str | None = None):
    """The control channel ``serve`` uses: ``url`` through pyserial, else a new pty linked at ``link``."""
    if url:
        return SerialControl(frontend, url)
    return PtyControl(frontend, link)


class ControlClient:
    """The client end of a control channel: one line out, one line back."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url
        self.timeout = timeout
        try:
            self.port = serial.serial_for_url(url, timeout=timeout, write_timeout=timeout)
        except (serial.SerialException, ValueError, OSError) as exc:
            raise ControlError(f"cannot open control channel {url!r}: {exc} "
                               f"(give the path `splitpoint serve` printed, or its --control-link)") from exc
        try:
            self.port.reset_input_buffer()   # a reply nobody read earlier must not answer us
        except (serial.SerialException, OSError, AttributeError):
            pass

    def ask(self, line: str, timeout: float | None = None) -> str:
        """Send ``line``; return the answer line without its line end."""
        port = self.port
        if timeout is not None:
            port.timeout = timeout
        try:
            port.write(line.encode("utf-8") + b"\n")
            port.flush()
            answer = port.read_until(b"\n")
        except (serial.SerialException, OSError) as exc:
            raise ControlError(f"control channel {self.url!r}: {exc}") from exc
        if not answer.endswith(b"\n"):
            raise ControlError(f"no answer to {line.split(' ')[0]} on {self.url!r} within "
                               f"{port.timeout:g} s (is `splitpoint serve` running?)")
        return answer.decode("utf-8", "replace").rstrip("\r\n")

    def status(self) -> dict:
        answer = self.ask("STATUS")
        if answer.startswith("ERR"):
            raise ControlError(f"STATUS refused: {answer}")
        try:
            return json.loads(answer)
        except ValueError:
            raise ControlError(f"STATUS answer is not JSON: {answer[:80]!r}") from None

    def close(self):
        self.port.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def exchange(url: str, line: str, timeout: float = 30.0) -> str:
    """Send one line on the control channel at ``url`` and return the answer line (client side)."""
    with ControlClient(url, timeout) as client:
        return client.ask(line)
