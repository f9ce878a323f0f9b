"""Type stubs of the NBD request scanner (``nbdwire.pyx`` and its twin ``nbdwire_py.py``)."""
from collections.abc import Buffer

REQUEST_MAGIC: int
HEADER: int
CMD_WRITE: int

Request = tuple[int, int, int, int, int, bytes | memoryview | None]  # (cmd, flags, cookie, offset, length, payload)

def check_range(size: int, pos: int, end: int) -> None: ...
def scan(buf: Buffer, pos: int, end: int, lend_min: int, max_write: int) -> tuple[list[Request], int, int]: ...
