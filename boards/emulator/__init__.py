"""splitpoint.boards.emulator: the Python bridge board (``splitpoint emulate BOARD_ID --link PATH``).

Owns the board's firmware over a medium (``engine``, on the shared session engine of hal/wire), the pty
link with its modelled rate, faults and unplug/replug (``board``), and the
control channel (``control``). It runs a board definition; it never changes one.
"""
from splitpoint.boards.emulator.board import Emulator, open_storage
from splitpoint.boards.emulator.engine import BoardEngine

__all__ = ["BoardEngine", "Emulator", "open_storage"]
