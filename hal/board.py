# URL grammar:  board://BOARD_ID[?port=PORT][&rto=DURATION][&retries=N][&reconnect=DURATION][&window=N][&rate=N]
#   PORT is a device path or any pyserial URL; without it a real board is found by its USB VID/PID
#   (an emulated board needs the PATH given to `splitpoint emulate --link`). The rest default to the
#   board definition's link rate and window; the URL is parsed once, here.
"""The ``board://`` backend: a serial bridge board named by its definition (boards/<ID>/board.toml).

Owns only what a definition adds to ``serial://``: the link's baud and rate,
the window, finding a real board's data port by USB VID/PID, and refusing a
board whose INFO names another id. The session is the wire session engine's, carried by SerialDevice.
"""
from __future__ import annotations

from splitpoint.hal import wire
from splitpoint.hal.contract import BadURLError, DeviceGoneError
from splitpoint.hal.serial_dev import SerialDevice
from splitpoint.hal.url import LINK_OPTIONS, link_options, split_port_url

GRAMMAR = "board://BOARD_ID[?port=PORT][&rto=DURATION][&retries=N][&reconnect=DURATION][&window=N][&rate=N]"
OPTIONS = {"port"} | (LINK_OPTIONS - {"baud"})  # the baud is the definition's


class BoardDevice(SerialDevice):
    scheme = "board"

    @classmethod
    def from_url(cls, url: str) -> "BoardDevice":
        from splitpoint.boards.schema import BoardDefinitionError, detect, load_board

        board_id, opts = split_port_url(url, "board", GRAMMAR, OPTIONS)
        try:
            board = load_board(board_id)
        except BoardDefinitionError as exc:
            raise BadURLError(f"{exc}; grammar: {GRAMMAR}") from None
        port = opts.pop("port", None)
        if not port:
            if board.emulated:
                raise BadURLError(f"emulated board {board_id!r} needs port=PATH (the --link of `splitpoint "
                                  f"emulate`); grammar: {GRAMMAR}")
            candidates = [a for a in detect(boards=[board]) if a.role in ("data", "unknown")]
            if not candidates:
                raise DeviceGoneError(f"no attached {board_id} found (USB {board.usb_id}); plug it in, check "
                                      f"`splitpoint boards`, or give port=DEVICE")
            port = candidates[0].device
        kwargs = link_options(opts, GRAMMAR, wire.MAX_WINDOW)
        kwargs.setdefault("rate", board.link_rate)
        kwargs.setdefault("window", board.window)
        dev = cls(port, baud=board.baud or 115200, expect_board=board_id, **kwargs)
        dev.board = board
        return dev

    def describe(self):
        return f"board {self.info.board_id} on {self.port_url}: {self.size} bytes, block {self.block_size}"
