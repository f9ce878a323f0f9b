"""NBD request scanning, pure-Python twin of ``nbdwire.pyx``.

Owns one job of the NBD transmission phase: cutting the complete requests out of a receive
buffer in one call, so a connection's loop turn handles a whole batch without unpacking each
28-byte header itself. Layout (doc/proto.md, big-endian): magic u32, command flags u16, type
u16, cookie u64, offset u64, length u32; a WRITE's payload follows its header.

``scan(buf, pos, end, lend_min, max_write)`` -> ``(requests, pos, want)``:
- ``requests``: a list of ``(cmd, flags, cookie, offset, length, payload)`` in wire order;
  ``payload`` is None except for WRITE: ``bytes`` (a copy) below ``lend_min`` bytes, else a
  slice of ``buf`` (no copy: the caller must then not reuse the buffer while it is held);
- ``pos``: where scanning stopped;
- ``want``: bytes needed from ``pos`` before scanning can go on (28, or a WRITE's header and
  payload), or 0 when the message at ``pos`` is one ``scan`` leaves to the caller: a bad magic
  or a WRITE longer than ``max_write`` (it never reads a payload it would not take).

``buf`` is any C-contiguous byte buffer (bytes, bytearray, a memoryview of one); the caller
passes a memoryview when it wants slices rather than copies. Bad arguments: ValueError.
"""
from __future__ import annotations

import struct

REQUEST_MAGIC = 0x25609513
HEADER = 28
CMD_WRITE = 1

_REQUEST = struct.Struct(">IHHQQI")


def check_range(size: int, pos: int, end: int) -> None:
    """ValueError unless 0 <= pos <= end <= size."""
    if not 0 <= pos <= end <= size:
        raise ValueError(f"scan range [{pos}, {end}) is not inside a buffer of {size} bytes")


def scan(buf, pos: int, end: int, lend_min: int, max_write: int):
    """Every complete request in ``buf[pos:end]``; see the module docstring."""
    view = memoryview(buf)
    check_range(view.nbytes, pos, end)
    unpack = _REQUEST.unpack_from
    out = []
    append = out.append
    while end - pos >= HEADER:
        magic, flags, cmd, cookie, offset, length = unpack(view, pos)
        if magic != REQUEST_MAGIC:
            return out, pos, 0
        if cmd == CMD_WRITE:
            if length > max_write:
                return out, pos, 0
            start = pos + HEADER
            stop = start + length
            if stop > end:
                return out, pos, HEADER + length
            payload = buf[start:stop] if length >= lend_min else view[start:stop].tobytes()
            append((cmd, flags, cookie, offset, length, payload))
            pos = stop
        else:
            append((cmd, flags, cookie, offset, length, None))
            pos += HEADER
    return out, pos, HEADER
