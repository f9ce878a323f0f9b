"""The C firmware's host build behind ptys: a board a host opens like any other (``board://ID?port=PATH``).

Owns ``CBoardLink``: the data pty linked at PATH and the control pty at
PATH.control (the layout ``splitpoint emulate --qemu`` gives a QEMU board),
and one thread that moves bytes between them and the ``CBoard``. It never
interprets a byte: framing, sessions and TRIGGERs are the firmware's.

Run it on its own with ``python -m splitpoint.boards.firmware.pty_link BOARD_ID --link PATH``.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import threading

from splitpoint.boards.emulator.pty import Pty
from splitpoint.boards.firmware.cboard import CHANNEL_CONTROL, CHANNEL_DATA, CBoard


class CBoardLink:
    """``board`` (a CBoard) served on a data pty at ``link`` and a control pty at ``link + '.control'``."""

    def __init__(self, board: CBoard, link: str, control_link: str | None = None):
        self.board = board
        self.link_path = os.path.abspath(link)
        self.control_path = os.path.abspath(control_link or link + ".control")
        self._ptys: dict[int, Pty] = {}
        self._pending = {CHANNEL_DATA: bytearray(), CHANNEL_CONTROL: bytearray()}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()   # held while the firmware runs; take it to inspect the board

    def start(self) -> "CBoardLink":
        self._ptys = {CHANNEL_DATA: Pty(self.link_path), CHANNEL_CONTROL: Pty(self.control_path)}
        self._thread = threading.Thread(target=self._loop, name=f"cboard-{self.board.board_id}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for pty in self._ptys.values():
            pty.close()
        self._ptys = {}
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _loop(self):
        masters = {pty.master: ch for ch, pty in self._ptys.items()}
        while not self._stop.is_set():
            want_write = [self._ptys[ch].master for ch, buf in self._pending.items() if buf]
            try:
                readable, writable, _ = select.select([self._wake_r, *masters], want_write, [], 0.5)
            except (OSError, ValueError):
                return
            for fd in readable:
                if fd == self._wake_r:
                    continue
                try:
                    data = os.read(fd, 65536)
                except OSError:   # EAGAIN, or EIO while no one holds the slave open
                    continue
                ch = masters[fd]
                with self.lock:
                    if ch == CHANNEL_DATA:
                        self._pending[ch] += self.board.data_in(data)
                    else:
                        self._pending[ch] += self.board.control_in(data)
            for fd in writable:
                buf = self._pending[masters[fd]]
                try:
                    del buf[:os.write(fd, buf)]
                except BlockingIOError:
                    pass
                except OSError:
                    buf.clear()   # the host hung up: the bytes are lost on the line, as on a cable


def main(argv=None) -> int:
    from splitpoint.boards.schema import load_board

    ap = argparse.ArgumentParser(prog="python -m splitpoint.boards.firmware.pty_link",
                                 description="Run the C firmware's host build as BOARD_ID on ptys.")
    ap.add_argument("board_id")
    ap.add_argument("--link", required=True, help="data pty path (control at PATH.control)")
    ap.add_argument("--capacity", type=int, help="bytes of the primary (default: the board definition's)")
    ap.add_argument("--pool", type=int, default=3, help="backup regions (default 3)")
    args = ap.parse_args(argv)
    board = CBoard.from_definition(load_board(args.board_id), capacity=args.capacity, pool_members=args.pool)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with CBoardLink(board, args.link) as link:
        print(f"C firmware board {args.board_id} on {link.link_path}, control on {link.control_path}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
