"""Reconnects across a board reset: frames of the old session still on the line never pass for new ones.

Under load, a retransmission of a request can sit in the board's receive path while the board is
reset and the host handshakes again. These tests put such a frame there on purpose (a filter
that holds it) instead of waiting for a loaded machine to do it once in twenty runs.
"""
import random
import threading
import time

import pytest
import serial

from splitpoint.hal import wire
from splitpoint.boards.schema import load_board
from splitpoint.boards.emulator import Emulator
from splitpoint.hal import open_device
from splitpoint.hal.filters import FrameChain
from splitpoint.hal.filters.base import FrameFilter
from splitpoint.hal.filters.delay import DelayFrames
from splitpoint.hal.serial_dev import BoardResetError

BOARD = "emu-usb-fs"
FAST = "rto=0.05&rate=200M&retries=16"


class HoldFrames(FrameFilter):
    """Holds every request frame with one seq until released, then passes everything."""

    def __init__(self, seq: int):
        super().__init__(random.Random(0))
        self.seq = seq
        self.held: list[bytes] = []
        self.released = threading.Event()

    def push(self, frame, now):
        if not self.released.is_set():
            for frm in wire.frame.FrameDecoder().feed(frame):
                if frm[3] == self.seq and frm[1] != wire.MsgType.INFO:
                    self.held.append(frame)
                    return []
        return [frame]

    def poll(self, now):
        if self.released.is_set() and self.held:
            out, self.held = self.held, []
            return out
        return []


@pytest.fixture
def emulator(tmp_path):
    link = str(tmp_path / "link")
    board = load_board(BOARD)
    emu = Emulator(board, link, open_device(f"ram://?size=1M&block={board.block_size}"), rate=0, seed=1).start()
    yield emu, link
    emu.stop()


def wait_for(cond, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_request_of_the_old_session_is_never_taken_for_a_new_one(emulator):
    emu, link = emulator
    dev = open_device(f"board://{BOARD}?port={link}&{FAST}&reconnect=10s")
    dev.write(0, b"a" * 4096)                       # seq 1
    hold = HoldFrames(dev.next_seq)
    emu.rx_chain = FrameChain([hold])
    pending = dev.submit_write(4096, b"b" * 4096)   # it and its retransmissions stay on the line
    wait_for(lambda: hold.held, "the request never reached the board's receive path")
    emu.unplug()
    emu.engine.session = None                       # the board lost power: no session, no reply cache
    emu.replug()
    with pytest.raises(BoardResetError, match="lost its session"):
        pending.result(30)
    before = emu.stats["executed"] + emu.stats["stale"]
    hold.released.set()                             # the old frames reach the board after the new handshake
    wait_for(lambda: emu.stats["executed"] + emu.stats["stale"] > before, "the held frames never arrived")
    dev.write(8192, b"c" * 4096)                    # must be executed, not answered with the old frame's reply
    assert dev.read(8192, 4096) == b"c" * 4096
    assert emu.engine.device.read(8192, 4096) == b"c" * 4096
    dev.close()


def test_a_stray_error_reply_during_the_handshake_is_not_taken_for_the_info_answer(emulator):
    emu, link = emulator
    # the board's replies are late, so the answer to a request sent before this host opened the port
    # arrives while it waits for its INFO answer, with the same number as the INFO nonce (1)
    emu.tx_chain = FrameChain([DelayFrames(random.Random(0), 0.3)])
    stray = serial.serial_for_url(link, timeout=1)
    stray.write(b"\x00" + wire.Write(seq=1, offset=0, data=b"x" * 512).encode())   # no session: NO_SESSION
    stray.flush()
    stray.close()
    dev = open_device(f"board://{BOARD}?port={link}&rto=0.5&retries=3")
    try:
        dev.write(0, b"y" * 512)
        assert dev.read(0, 512) == b"y" * 512
    finally:
        dev.close()
