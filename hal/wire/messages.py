"""Typed messages of the wire protocol (docs/wire-protocol.md, section 2).

Owns message types, flags, error codes, payload layouts and their checks, on
top of the frame codec kernel (``splitpoint.pyx.select("frame")``). Both ends
use it: the serial/board HAL backends (host side) and the emulated board.
It never does I/O and holds no session state: windows, retransmission and
duplicate detection belong to ``hal/wire/session.py``.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from splitpoint import pyx

frame = pyx.select("frame")

__all__ = ["PROTOCOL_VERSION", "PROTOCOL_MIN", "MAX_WINDOW", "MAX_ERROR_TEXT", "MAX_BOARD_ID", "MAX_LABEL", "MAX_LINK_NAME",
           "MsgType", "REQUEST_TYPES", "Flag", "ALLOWED_FLAGS", "ErrorCode", "Feature", "WireError",
           "UnsupportedVersionError", "UnknownTypeError", "BadPayloadError", "version_string", "pack_version",
           "BoardInfo", "Message", "Info", "Read", "Write", "Flush", "Trim", "Trigger", "Ack", "Error", "Nak",
           "BackupList", "BackupRead", "BackupEntry", "pack_backups", "unpack_backups",
           "decode_message", "decode_wire", "seq_after", "seq_add", "to_json", "from_json"]

PROTOCOL_VERSION = 1  # the version this implementation speaks
PROTOCOL_MIN = 1  # the oldest version it still accepts
MAX_WINDOW = 32  # NAK's bitmap covers 32 sequence numbers past `expected`
MAX_ERROR_TEXT = 128  # ERROR message bytes (UTF-8)
MAX_BOARD_ID = 32  # board id bytes in INFO's reply
# TRIGGER label bytes: the controller's trigger rules allow the same (firmware.triggers.LABEL_MAX, checked by
# tests/test_wire_vectors.py); the HAL sits below the controller and does not import it
MAX_LABEL = 64
MAX_LINK_NAME = 64  # INFO's target and origin (device links), bytes each


class MsgType(enum.IntEnum):
    INFO = 0x01
    READ = 0x02
    WRITE = 0x03
    FLUSH = 0x04
    TRIM = 0x05
    TRIGGER = 0x06
    ACK = 0x80
    ERROR = 0x81
    NAK = 0x82
    BACKUPS = 0x07  # list the board's frozen backups (feature BACKUPS)
    BACKUP_READ = 0x08  # read a frozen backup named by its trigger id (feature BACKUPS)


REQUEST_TYPES = frozenset({MsgType.INFO, MsgType.READ, MsgType.WRITE, MsgType.FLUSH, MsgType.TRIM,
                           MsgType.TRIGGER, MsgType.BACKUPS, MsgType.BACKUP_READ})


class Flag(enum.IntFlag):
    FUA = 0x0001  # WRITE, TRIM: durable before the ACK
    ZEROES = 0x0002  # TRIM: the range must read back as zeros (write_zeroes)
    MISSED = 0x0004  # TRIGGER (device links): the sender could not cut here exactly; a barrier, never a backup
    RESUMED = 0x0100  # ACK of INFO: the board already held this session and kept its state
    REPLAY = 0x4000  # ACK, ERROR: answered from the reply cache (a duplicate request)
    RETRANSMIT = 0x8000  # request: a resend of a seq already sent once


#: flags each type may carry; any other bit is BAD_PAYLOAD
ALLOWED_FLAGS = {
    MsgType.INFO: Flag.RETRANSMIT,
    MsgType.READ: Flag.RETRANSMIT,
    MsgType.WRITE: Flag.FUA | Flag.RETRANSMIT,
    MsgType.FLUSH: Flag.RETRANSMIT,
    MsgType.TRIM: Flag.FUA | Flag.ZEROES | Flag.RETRANSMIT,
    MsgType.TRIGGER: Flag.MISSED | Flag.RETRANSMIT,
    MsgType.ACK: Flag.REPLAY | Flag.RESUMED,
    MsgType.ERROR: Flag.REPLAY,
    MsgType.NAK: Flag(0),
    MsgType.BACKUPS: Flag.RETRANSMIT,
    MsgType.BACKUP_READ: Flag.RETRANSMIT,
}


class ErrorCode(enum.IntEnum):
    UNSUPPORTED_VERSION = 1  # frame version outside the receiver's range
    UNKNOWN_TYPE = 2  # message type the receiver does not know
    BAD_PAYLOAD = 3  # payload length or fields malformed, or flags not allowed
    OUT_OF_RANGE = 4  # offset/length past the capacity (overflow included)
    MISALIGNED = 5  # offset/length not a multiple of the block size, or zero length
    TOO_LARGE = 6  # transfer above max_transfer
    READ_ONLY = 7  # write, trim or zeroes on a read-only medium
    IO = 8  # the medium failed
    STALE = 9  # seq older than the reply cache: no reply can be given
    WINDOW = 10  # seq beyond expected + window
    NO_SESSION = 11  # request before an INFO handshake
    NO_BACKUP = 12  # BACKUP_READ of a trigger id that names no frozen backup


class Feature(enum.IntFlag):
    FLUSH = 0x01  # the medium has a volatile cache that FLUSH empties
    TRIM = 0x02
    FUA = 0x04
    TRIGGER = 0x08  # TRIGGER is recorded (and forwarded to a listener), not only a barrier
    READ_ONLY = 0x10
    CONTROL = 0x20  # the board has a control channel (second UART / CDC interface)
    BACKUPS = 0x40  # the board keeps a pool and answers BACKUPS and BACKUP_READ


class WireError(ValueError):
    """A frame decoded but its message is unusable; ``code`` is the ERROR to answer with."""

    code = ErrorCode.BAD_PAYLOAD

    def __init__(self, message: str, type_: int = 0, seq: int = 0):
        super().__init__(message)
        self.type = type_
        self.seq = seq


class UnsupportedVersionError(WireError):
    code = ErrorCode.UNSUPPORTED_VERSION


class UnknownTypeError(WireError):
    code = ErrorCode.UNKNOWN_TYPE


class BadPayloadError(WireError):
    code = ErrorCode.BAD_PAYLOAD


_U64U32 = struct.Struct("<QI")
_U64 = struct.Struct("<Q")
_U32U32 = struct.Struct("<II")
_ERR = struct.Struct("<BH")
_INFO = struct.Struct("<BBHIQIIIII")  # proto_min, proto_max, window, block, capacity, max_transfer,
#                                       features, firmware, session, next_seq


def version_string(packed: int) -> str:
    """'major.minor.patch' of a firmware version packed as major<<16 | minor<<8 | patch."""
    return f"{packed >> 16 & 0xFF}.{packed >> 8 & 0xFF}.{packed & 0xFF}"


def pack_version(text: str) -> int:
    major, minor, patch = (int(p) for p in text.split("."))
    if not all(0 <= v <= 255 for v in (major, minor, patch)):
        raise ValueError(f"firmware version {text!r}: each part must be 0..255")
    return major << 16 | minor << 8 | patch


@dataclass(slots=True)
class BoardInfo:
    """What INFO's ACK tells the host about a board."""

    capacity: int
    block_size: int
    max_transfer: int
    window: int
    features: int = 0
    firmware: int = 0  # major<<16 | minor<<8 | patch
    session: int = 0
    next_seq: int = 0
    board_id: str = ""
    proto_min: int = PROTOCOL_MIN
    proto_max: int = PROTOCOL_VERSION

    def pack(self) -> bytes:
        bid = self.board_id.encode()
        if len(bid) > MAX_BOARD_ID:
            raise ValueError(f"board id {self.board_id!r} is longer than {MAX_BOARD_ID} bytes")
        return _INFO.pack(self.proto_min, self.proto_max, self.window, self.block_size, self.capacity,
                          self.max_transfer, self.features, self.firmware, self.session, self.next_seq) + bid

    @classmethod
    def unpack(cls, body: bytes) -> "BoardInfo":
        if len(body) < _INFO.size:
            raise BadPayloadError(f"INFO reply of {len(body)} bytes is shorter than {_INFO.size}", MsgType.ACK)
        (pmin, pmax, window, block, capacity, max_transfer, features, firmware, session,
         next_seq) = _INFO.unpack_from(body, 0)
        rest = body[_INFO.size:]
        # later versions may append fields after the board id's own length prefix; v1 has none
        try:
            board_id = rest.decode()
        except UnicodeDecodeError as exc:
            raise BadPayloadError(f"INFO reply board id is not UTF-8: {exc}", MsgType.ACK) from None
        if len(rest) > MAX_BOARD_ID:
            raise BadPayloadError(f"INFO reply board id is longer than {MAX_BOARD_ID} bytes", MsgType.ACK)
        return cls(capacity, block, max_transfer, window, features, firmware, session, next_seq, board_id,
                   pmin, pmax)


@dataclass(slots=True)
class Message:
    """Base of every message: the header's seq and flags; ``type`` is fixed per subclass."""

    seq: int = 0
    flags: int = 0
    type = MsgType.INFO  # overridden by each subclass

    def payload(self) -> bytes:
        return b""

    def encode(self, version: int = PROTOCOL_VERSION) -> bytes:
        """The wire bytes (COBS frame with its delimiter)."""
        return frame.encode_frame(self.type, self.flags, self.seq, self.payload(), version)


@dataclass(slots=True)
class Info(Message):
    """Handshake: resume ``session`` if the board has it, else start it at ``first_seq``.

    A device link adds ``target`` (the LUN it feeds on the far controller) and ``origin`` (who
    sends the stream, shown beside the backups cut from it); a board takes neither."""

    session: int = 0
    first_seq: int = 1
    target: str = ""
    origin: str = ""
    type = MsgType.INFO

    def payload(self):
        base = _U32U32.pack(self.session, self.first_seq)
        if not self.target and not self.origin:
            return base   # exactly version 1's INFO: every board takes it
        return base + _short_text(self.target, "target") + _short_text(self.origin, "origin")


@dataclass(slots=True)
class Read(Message):
    offset: int = 0
    length: int = 0
    type = MsgType.READ

    def payload(self):
        return _U64U32.pack(self.offset, self.length)


@dataclass(slots=True)
class Write(Message):
    offset: int = 0
    data: bytes = b""
    type = MsgType.WRITE

    def payload(self):
        return _U64.pack(self.offset) + bytes(self.data)


@dataclass(slots=True)
class Flush(Message):
    type = MsgType.FLUSH


@dataclass(slots=True)
class Trim(Message):
    offset: int = 0
    length: int = 0
    type = MsgType.TRIM

    def payload(self):
        return _U64U32.pack(self.offset, self.length)


@dataclass(slots=True)
class Trigger(Message):
    id: int = 0
    label: str = ""
    type = MsgType.TRIGGER

    def payload(self):
        label = self.label.encode()
        if len(label) > MAX_LABEL:
            raise ValueError(f"TRIGGER label is {len(label)} bytes; at most {MAX_LABEL}")
        return _U64.pack(self.id) + label


@dataclass(slots=True)
class Ack(Message):
    """Success reply to request ``seq`` of type ``of``: READ carries ``data``, INFO carries ``info``."""

    of: int = MsgType.INFO
    data: bytes = b""
    info: BoardInfo | None = None
    type = MsgType.ACK

    def payload(self):
        body = self.info.pack() if self.of == MsgType.INFO and self.info is not None else bytes(self.data)
        return bytes((self.of,)) + body


@dataclass(slots=True)
class Error(Message):
    """Failure reply to request ``seq`` of type ``of``."""

    of: int = MsgType.INFO
    code: int = ErrorCode.IO
    message: str = ""
    type = MsgType.ERROR

    def payload(self):
        text = self.message.encode()[:MAX_ERROR_TEXT].decode(errors="ignore").encode()  # never cut a character
        return _ERR.pack(self.of, self.code) + text


@dataclass(slots=True)
class Nak(Message):
    """'Resend from ``expected``': the board executed everything before it; bit i of
    ``received`` says seq expected+1+i is already buffered."""

    expected: int = 0
    received: int = 0
    type = MsgType.NAK

    def payload(self):
        return _U32U32.pack(self.expected, self.received)


@dataclass(slots=True)
class BackupList(Message):
    """'Which backups do you hold?': the ACK's body is ``pack_backups`` of them, in the board's member order."""

    type = MsgType.BACKUPS


@dataclass(slots=True)
class BackupRead(Message):
    """Read ``length`` bytes at ``offset`` of the frozen backup cut by TRIGGER ``trigger_id``."""

    trigger_id: int = 0
    offset: int = 0
    length: int = 0
    type = MsgType.BACKUP_READ

    def payload(self):
        return _BACKUP_READ.pack(self.trigger_id, self.offset, self.length)


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One frozen backup as BACKUPS lists it: its TRIGGER's id and label, and the CRC32C of its bytes."""

    trigger_id: int
    digest: int
    label: str = ""


_BACKUP_READ = struct.Struct("<QQI")  # trigger id, offset, length
_ENTRY = struct.Struct("<QIB")  # trigger id, digest, label length; the label follows


def pack_backups(entries) -> bytes:
    """The ACK body of BACKUPS: each entry as trigger_id u64, digest u32, label_len u8, label."""
    out = bytearray()
    for e in entries:
        label = e.label.encode()
        if len(label) > MAX_LABEL:
            raise ValueError(f"backup label is {len(label)} bytes; at most {MAX_LABEL}")
        out += _ENTRY.pack(e.trigger_id, e.digest, len(label)) + label
    return bytes(out)


def unpack_backups(body: bytes) -> list:
    """The entries of a BACKUPS ACK body; BadPayloadError when an entry is torn or its label bad."""
    out, pos = [], 0
    while pos < len(body):
        if len(body) - pos < _ENTRY.size:
            raise BadPayloadError(f"BACKUPS entry at byte {pos} is torn", MsgType.ACK)
        tid, digest, n = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        if n > MAX_LABEL or len(body) - pos < n:
            raise BadPayloadError(f"BACKUPS entry label of {n} bytes at byte {pos} is too long or torn", MsgType.ACK)
        out.append(BackupEntry(tid, digest, _text(body[pos:pos + n], MsgType.ACK, 0)))
        pos += n
    return out


_BY_TYPE = {cls.type: cls for cls in (Info, Read, Write, Flush, Trim, Trigger, Ack, Error, Nak, BackupList,
                                      BackupRead)}


def _need(payload: bytes, size: int, type_: int, seq: int, exact: bool = True) -> None:
    if (len(payload) != size) if exact else (len(payload) < size):
        want = f"{size}" if exact else f"at least {size}"
        raise BadPayloadError(f"{MsgType(type_).name} payload is {len(payload)} bytes, expected {want}", type_, seq)


def decode_message(frm: tuple) -> Message:
    """The typed message of a decoded frame (version, type, flags, seq, payload).

    Raises UnsupportedVersionError, UnknownTypeError or BadPayloadError carrying
    the frame's type and seq, so a receiver can answer ERROR with its code.
    """
    version, type_, flags, seq, payload = frm
    if not PROTOCOL_MIN <= version <= PROTOCOL_VERSION:
        raise UnsupportedVersionError(f"frame version {version}; this end speaks {PROTOCOL_MIN}..{PROTOCOL_VERSION}",
                                      type_, seq)
    try:
        mtype = MsgType(type_)
    except ValueError:
        raise UnknownTypeError(f"unknown message type {type_:#04x}", type_, seq) from None
    if flags & ~ALLOWED_FLAGS[mtype]:
        raise BadPayloadError(f"{mtype.name} does not allow flags {flags & ~ALLOWED_FLAGS[mtype]:#06x}", type_, seq)
    p = bytes(payload)
    if mtype == MsgType.INFO:
        _need(p, 8, type_, seq, exact=False)
        session, first = _U32U32.unpack_from(p)
        target, rest = _take_short_text(p[8:], type_, seq) if len(p) > 8 else ("", b"")
        origin, rest = _take_short_text(rest, type_, seq) if rest else ("", b"")
        if rest:
            raise BadPayloadError(f"INFO carries {len(rest)} bytes after its origin", type_, seq)
        return Info(seq, flags, session, first, target, origin)
    if mtype in (MsgType.READ, MsgType.TRIM):
        _need(p, 12, type_, seq)
        offset, length = _U64U32.unpack(p)
        return _BY_TYPE[mtype](seq, flags, offset, length)
    if mtype == MsgType.WRITE:
        _need(p, 8, type_, seq, exact=False)
        return Write(seq, flags, _U64.unpack_from(p)[0], p[8:])
    if mtype == MsgType.FLUSH:
        _need(p, 0, type_, seq)
        return Flush(seq, flags)
    if mtype == MsgType.TRIGGER:
        _need(p, 8, type_, seq, exact=False)
        label = p[8:]
        if len(label) > MAX_LABEL:
            raise BadPayloadError(f"TRIGGER label is {len(label)} bytes; at most {MAX_LABEL}", type_, seq)
        return Trigger(seq, flags, _U64.unpack_from(p)[0], _text(label, type_, seq))
    if mtype == MsgType.ACK:
        _need(p, 1, type_, seq, exact=False)
        of = p[0]
        if of not in _BY_TYPE or of not in REQUEST_TYPES:
            raise BadPayloadError(f"ACK of unknown request type {of:#04x}", type_, seq)
        if of == MsgType.INFO:
            try:
                return Ack(seq, flags, of, b"", BoardInfo.unpack(p[1:]))
            except BadPayloadError as exc:
                raise BadPayloadError(str(exc), type_, seq) from None
        if of == MsgType.BACKUPS:
            try:
                unpack_backups(p[1:])
            except BadPayloadError as exc:
                raise BadPayloadError(str(exc), type_, seq) from None
        elif of not in (MsgType.READ, MsgType.BACKUP_READ) and len(p) != 1:
            raise BadPayloadError(f"ACK of {MsgType(of).name} carries {len(p) - 1} unexpected bytes", type_, seq)
        return Ack(seq, flags, of, p[1:])
    if mtype == MsgType.ERROR:
        _need(p, 3, type_, seq, exact=False)
        of, code = _ERR.unpack_from(p)
        if len(p) - 3 > MAX_ERROR_TEXT:
            raise BadPayloadError(f"ERROR text is {len(p) - 3} bytes; at most {MAX_ERROR_TEXT}", type_, seq)
        return Error(seq, flags, of, code, _text(p[3:], type_, seq))
    if mtype == MsgType.BACKUPS:
        _need(p, 0, type_, seq)
        return BackupList(seq, flags)
    if mtype == MsgType.BACKUP_READ:
        _need(p, _BACKUP_READ.size, type_, seq)
        return BackupRead(seq, flags, *_BACKUP_READ.unpack(p))
    _need(p, 8, type_, seq)
    expected, received = _U32U32.unpack(p)
    return Nak(seq, flags, expected, received)


def _short_text(text: str, what: str) -> bytes:
    raw = text.encode()
    if len(raw) > MAX_LINK_NAME:
        raise ValueError(f"INFO {what} {text!r} is longer than {MAX_LINK_NAME} bytes")
    return bytes((len(raw),)) + raw


def _take_short_text(p: bytes, type_: int, seq: int) -> tuple[str, bytes]:
    """(text, rest) of a u8-length-prefixed UTF-8 field at the start of ``p``."""
    n = p[0]
    if n > MAX_LINK_NAME or len(p) < 1 + n:
        raise BadPayloadError(f"INFO field of {n} bytes does not fit (at most {MAX_LINK_NAME})", type_, seq)
    return _text(p[1:1 + n], type_, seq), p[1 + n:]


def _text(raw: bytes, type_: int, seq: int) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise BadPayloadError(f"{MsgType(type_).name} text is not UTF-8: {exc}", type_, seq) from None


def decode_wire(wire: bytes, max_payload: int = frame.DEFAULT_MAX_PAYLOAD) -> Message:
    """The message in one wire frame (delimiter optional); frame errors propagate as frame.FrameError."""
    return decode_message(frame.decode_frame(wire, max_payload))


def seq_after(a: int, b: int) -> int:
    """a - b in serial-number arithmetic modulo 2**32 (negative when a is before b)."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def seq_add(a: int, n: int) -> int:
    return (a + n) & 0xFFFFFFFF


# ---- JSON form used by tests/vectors (hex for bytes, names for enums) ----

def to_json(msg: Message) -> dict:
    out: dict = {"type": msg.type.name, "seq": msg.seq, "flags": _flag_names(msg.flags)}
    for name in msg.__dataclass_fields__:
        if name in ("seq", "flags"):
            continue
        value = getattr(msg, name)
        if name == "of":
            value = MsgType(value).name
        elif name == "code":
            value = ErrorCode(value).name
        elif isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        elif isinstance(value, BoardInfo):
            value = {k: getattr(value, k) for k in value.__dataclass_fields__}
        elif value is None or (name in ("target", "origin") and not value):
            continue   # a board's INFO has no link fields: version 1's JSON form is unchanged
        out[name] = value
    return out


def from_json(doc: dict) -> Message:
    cls = _BY_TYPE[MsgType[doc["type"]]]
    kwargs: dict = {"seq": doc["seq"], "flags": _flags_from(doc.get("flags", []))}
    for name, value in doc.items():
        if name in ("type", "seq", "flags"):
            continue
        if name == "of":
            value = MsgType[value]
        elif name == "code":
            value = ErrorCode[value]
        elif name == "data":
            value = bytes.fromhex(value)
        elif name == "info":
            value = BoardInfo(**value)
        kwargs[name] = value
    return cls(**kwargs)


def _flag_names(flags: int) -> list:
    return [f.name for f in Flag if flags & f]


def _flags_from(names: list) -> int:
    value = 0
    for n in names:
        value |= Flag[n]
    return value

