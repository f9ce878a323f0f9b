"""NBD wire constants and message layouts (doc/proto.md of NetworkBlockDevice/nbd).

This module owns numbers and byte layouts only: no sockets, no state. Every
value here is named as in the protocol document so a reader can grep for it.
All integers on the wire are big-endian.
"""
from __future__ import annotations

import errno as _errno
import struct

# --- magics -----------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943             # 'NBDMAGIC', first 8 bytes the server sends
IHAVEOPT = 0x49484156454F5054             # 'IHAVEOPT', newstyle magic and every option's magic
OPT_REPLY_MAGIC = 0x3E889045565A9         # magic of every option reply
REQUEST_MAGIC = 0x25609513                # NBD_REQUEST_MAGIC
SIMPLE_REPLY_MAGIC = 0x67446698           # NBD_SIMPLE_REPLY_MAGIC
STRUCTURED_REPLY_MAGIC = 0x668E33EF       # NBD_STRUCTURED_REPLY_MAGIC

# --- handshake flags (server, 16 bits) and client flags (32 bits) -----------
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1
CLIENT_FLAGS_KNOWN = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# --- transmission flags (16 bits) -------------------------------------------
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11

# --- options ------------------------------------------------------------------
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10

# --- option reply types -------------------------------------------------------
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_PLATFORM = (1 << 31) + 4
REP_ERR_TLS_REQD = (1 << 31) + 5
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
REP_ERR_TOO_BIG = (1 << 31) + 9

# --- NBD_REP_INFO information types -------------------------------------------
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# --- commands and command flags ---------------------------------------------------
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_NAMES = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH", CMD_TRIM: "TRIM",
             CMD_CACHE: "CACHE", CMD_WRITE_ZEROES: "WRITE_ZEROES", CMD_BLOCK_STATUS: "BLOCK_STATUS"}

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# --- structured replies ---------------------------------------------------------
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# --- base:allocation ------------------------------------------------------------
META_BASE_ALLOCATION = "base:allocation"
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1

# --- error values -----------------------------------------------------------------
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108
ERROR_NAMES = {EPERM: "EPERM", EIO: "EIO", ENOMEM: "ENOMEM", EINVAL: "EINVAL", ENOSPC: "ENOSPC",
               EOVERFLOW: "EOVERFLOW", ENOTSUP: "ENOTSUP", ESHUTDOWN: "ESHUTDOWN"}

# host errno -> NBD error value; anything not listed becomes EIO
_ERRNO_TO_NBD = {
    _errno.EPERM: EPERM, _errno.EACCES: EPERM, _errno.EROFS: EPERM,
    _errno.EIO: EIO, _errno.ENOMEM: ENOMEM, _errno.EINVAL: EINVAL,
    _errno.ENOSPC: ENOSPC, _errno.EDQUOT: ENOSPC, _errno.EFBIG: ENOSPC,
    _errno.EOVERFLOW: EOVERFLOW, _errno.ENOTSUP: ENOTSUP, _errno.EOPNOTSUPP: ENOTSUP,
    _errno.ESHUTDOWN: ESHUTDOWN,
}


def nbd_error(code) -> int:
    """The NBD error value for a host errno (None or unknown -> EIO)."""
    return _ERRNO_TO_NBD.get(code, EIO)


# --- sizes ------------------------------------------------------------------------
#: largest READ or WRITE payload accepted (nbdkit accepts the same)
MAX_REQUEST = 64 << 20
#: largest option payload read into memory; longer options are skipped and refused
MAX_OPTION = 64 << 10
#: longest string (export name, query) the protocol allows
MAX_STRING = 4096

# --- layouts ----------------------------------------------------------------------
#: server greeting: NBDMAGIC, IHAVEOPT, handshake flags
GREETING = struct.Struct(">QQH")
#: option header from the client: IHAVEOPT, option, length
OPTION = struct.Struct(">QII")
#: option reply header: magic, option, reply type, length
OPTION_REPLY = struct.Struct(">QIII")
#: answer to NBD_OPT_EXPORT_NAME: size, transmission flags
EXPORT_NAME_REPLY = struct.Struct(">QH")
#: request: magic, command flags, type, cookie, offset, length
REQUEST = struct.Struct(">IHHQQI")
#: simple reply: magic, error, cookie
SIMPLE_REPLY = struct.Struct(">IIQ")
#: structured reply chunk header: magic, flags, type, cookie, payload length
STRUCTURED_REPLY = struct.Struct(">IHHQI")
#: NBD_INFO_EXPORT payload: type, size, transmission flags
INFO_EXPORT_PAYLOAD = struct.Struct(">HQH")
#: NBD_INFO_BLOCK_SIZE payload: type, minimum, preferred, maximum payload
INFO_BLOCK_SIZE_PAYLOAD = struct.Struct(">HIII")
#: structured reply header followed by the 64-bit offset of an OFFSET_DATA chunk
OFFSET_DATA_HEAD = struct.Struct(">IHHQIQ")
#: structured error chunk header + error + message length
ERROR_HEAD = struct.Struct(">IHHQIIH")


def option_reply(option: int, reply: int, payload: bytes = b"") -> bytes:
    """One fixed-newstyle option reply."""
    return OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, reply, len(payload)) + payload


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    """A final NBD_REPLY_TYPE_ERROR chunk carrying a human-readable message."""
    msg = message.encode("utf-8", "replace")[:MAX_STRING]
    return ERROR_HEAD.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie,
                           6 + len(msg), error, len(msg)) + msg


def done_chunk(cookie: int) -> bytes:
    """A final NBD_REPLY_TYPE_NONE chunk."""
    return STRUCTURED_REPLY.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, 0)


def block_status_chunk(cookie: int, context_id: int, extents, done: bool = True) -> bytes:
    """An NBD_REPLY_TYPE_BLOCK_STATUS chunk: ``extents`` is a list of (length, flags)."""
    body = struct.pack(f">I{2 * len(extents)}I", context_id, *[v for ext in extents for v in ext])
    return STRUCTURED_REPLY.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0,
                                 REPLY_TYPE_BLOCK_STATUS, cookie, len(body)) + body
