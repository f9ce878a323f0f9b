"""splitpoint.boards.emulator: the Python bridge board (``splitpoint emulate BOARD_ID --link PATH``).

Owns the board side of the wire protocol over a medium (``engine``), the pty
link with its modelled rate, faults and unplug/replug (``board``), and the
control channel (``control``). It runs a board definition; it never changes one.
"""
from splitpoint.boards.emulator.board import Emulator, open_storage
from splitpoint.boards.emulator.engine import BoardEngine

__all__ = ["BoardEngine", "Emulator", "open_storage"]
