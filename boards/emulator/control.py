"""The emulated board's control channel: one line in, one line out, in the controller's grammar.

Owns answering a control line (``answer``: TRIGGER, STATUS and PING are carried
out, the rest of firmware/triggers.py's grammar is answered ERR) and the loop
that reads lines from the control pty (``serve``). It never touches the data
link: a TRIGGER goes to the listener the board was given.
"""
from __future__ import annotations

import errno
import os
import select
import time

from splitpoint.firmware import triggers

MAX_LINE = 4096  # bytes of a control line without its newline


def answer(emu, line: str) -> str | None:
    """The one-line answer of board ``emu`` to one control-channel line (None for a blank line)."""
    try:
        command = triggers.parse_control_line(line)
    except triggers.ControlSyntaxError as exc:
        return triggers.reply_error(exc)
    if command is None:
        return None
    if isinstance(command, triggers.PingCommand):
        return "PONG"
    if isinstance(command, triggers.StatusCommand):
        return triggers.reply_json(emu.status())
    if isinstance(command, triggers.TriggerCommand):
        if command.target is not None:
            return triggers.reply_error(f"TRIGGER ON is not supported by board {emu.board.id}: it has one LUN")
        if emu.trigger_listener is None:
            return "ERR no controller is listening for TRIGGER on this board"
        try:
            trigger_id, seq = emu.trigger_listener(command.label or "")
        except Exception as exc:  # the listener's failure is reported on the line, not raised here
            return triggers.reply_error(f"trigger failed: {exc}")
        return triggers.reply_triggered(trigger_id, seq)
    return triggers.reply_unsupported(command, f"board {emu.board.id}")


def serve(emu, master: int, wake: int, stop) -> None:
    """Answer the lines arriving on pty ``master`` until ``stop`` is set (``wake`` interrupts the wait)."""
    buf = bytearray()
    while not stop.is_set():
        try:
            ready, _, _ = select.select([master, wake], [], [], 0.1)
        except (OSError, ValueError):
            return
        if master not in ready:
            continue
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:  # no one holds the slave open yet: wait for a client
                time.sleep(0.05)
                continue
            return
        buf += data
        if len(buf) > MAX_LINE and b"\n" not in buf:
            buf.clear()
            _write(master, "ERR line too long\n")
        while b"\n" in buf:
            raw, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            try:
                line = raw.decode().rstrip("\r")
            except UnicodeDecodeError:
                _write(master, "ERR line is not UTF-8\n")
                continue
            reply = answer(emu, line)
            if reply is not None:
                _write(master, reply + "\n")


def _write(master: int, text: str) -> None:
    try:
        os.write(master, text.encode())
    except OSError:
        pass
