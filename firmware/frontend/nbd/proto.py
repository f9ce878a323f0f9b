"""NBD protocol numbers and byte layouts (doc/proto.md of NetworkBlockDevice/nbd): their one home.

This module owns numbers and layouts only: no sockets, no state, no translation. Every value is
named as the protocol document names it (``NBD_CMD_WRITE``, ``NBD_REP_ERR_UNSUP``...), so a
reader can grep for it, and no module below the front end may import or name one: the NBD edge
translates requests, flags, allocation states and errors into the controller's own vocabulary
(``transmission``, ``replies``). All integers on the wire are big-endian.
"""
from __future__ import annotations

import struct

# --- magics -----------------------------------------------------------------
NBD_MAGIC = 0x4E42444D41474943                # 'NBDMAGIC', the first 8 bytes the server sends
NBD_IHAVEOPT = 0x49484156454F5054             # 'IHAVEOPT', newstyle magic and every option's magic
NBD_REP_MAGIC = 0x3E889045565A9               # magic of every option reply
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

# --- handshake flags (server, 16 bits) and client flags (32 bits) -----------
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1
#: every client flag this server knows; a client setting another one is dropped
NBD_FLAG_C_KNOWN = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES

# --- transmission flags (16 bits) -------------------------------------------
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# --- options ------------------------------------------------------------------
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10

# --- option reply types -------------------------------------------------------
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_ERR_UNSUP = (1 << 31) + 1
NBD_REP_ERR_POLICY = (1 << 31) + 2
NBD_REP_ERR_INVALID = (1 << 31) + 3
NBD_REP_ERR_PLATFORM = (1 << 31) + 4
NBD_REP_ERR_TLS_REQD = (1 << 31) + 5
NBD_REP_ERR_UNKNOWN = (1 << 31) + 6
NBD_REP_ERR_SHUTDOWN = (1 << 31) + 7
NBD_REP_ERR_BLOCK_SIZE_REQD = (1 << 31) + 8
NBD_REP_ERR_TOO_BIG = (1 << 31) + 9

# --- NBD_REP_INFO information types -------------------------------------------
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# --- commands and command flags ---------------------------------------------------
NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7
#: a command's name for messages
NBD_CMD_NAMES = {NBD_CMD_READ: "READ", NBD_CMD_WRITE: "WRITE", NBD_CMD_DISC: "DISC", NBD_CMD_FLUSH: "FLUSH",
                 NBD_CMD_TRIM: "TRIM", NBD_CMD_CACHE: "CACHE", NBD_CMD_WRITE_ZEROES: "WRITE_ZEROES",
                 NBD_CMD_BLOCK_STATUS: "BLOCK_STATUS"}

NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

# --- structured replies ---------------------------------------------------------
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) + 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# --- base:allocation ------------------------------------------------------------
NBD_META_BASE_ALLOCATION = "base:allocation"
NBD_STATE_HOLE = 1 << 0
NBD_STATE_ZERO = 1 << 1

# --- qemu:dirty-bitmap:<name> (changed-block maps, as qemu's NBD server names them) ----------
NBD_META_DIRTY_BITMAP = "qemu:dirty-bitmap:"
NBD_STATE_DIRTY = 1 << 0

# --- error values (the protocol's own numbers, whatever the host's errno.h says) ---
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108
#: an error value's name for log messages
NBD_ERROR_NAMES = {NBD_EPERM: "EPERM", NBD_EIO: "EIO", NBD_ENOMEM: "ENOMEM", NBD_EINVAL: "EINVAL",
                   NBD_ENOSPC: "ENOSPC", NBD_EOVERFLOW: "EOVERFLOW", NBD_ENOTSUP: "ENOTSUP",
                   NBD_ESHUTDOWN: "ESHUTDOWN"}

# --- sizes ------------------------------------------------------------------------
#: longest string (export name, query, message) the protocol allows
NBD_MAX_STRING = 4096
#: largest READ or WRITE payload this server accepts (nbdkit accepts the same)
MAX_REQUEST = 64 << 20
#: largest option payload this server reads into memory; longer options are skipped and refused
MAX_OPTION = 64 << 10

# --- layouts ----------------------------------------------------------------------
#: server greeting: NBD_MAGIC, NBD_IHAVEOPT, handshake flags
GREETING = struct.Struct(">QQH")
#: option header from the client: NBD_IHAVEOPT, option, length
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
