"""Frame codec, pure-Python twin of ``frame.pyx`` (same API, same bytes).

Owns the lowest layer of docs/wire-protocol.md: COBS stuffing, the 12-byte
header, the CRC32C trailer and a streaming decoder that resynchronises on the
0x00 delimiter. It knows nothing of message types or sessions: that is
``splitpoint.hal.wire``. It never raises out of ``FrameDecoder.feed``: a bad frame
is counted and kept in ``pop_errors()``, so garbage on a line can never crash
the side that reads it.

A wire frame::

    COBS( header(12) | payload(length) | crc32c(header|payload) u32 LE ) 0x00

    header: version u8 | type u8 | flags u16 LE | seq u32 LE | length u32 LE
"""
from __future__ import annotations

import struct

from crc32c import crc32c as _crc32c

VERSION = 1  # the only frame version this codec emits by default
HEADER_SIZE = 12  # version, type, flags, seq, length
TRAILER_SIZE = 4  # CRC32C over header and payload
OVERHEAD = HEADER_SIZE + TRAILER_SIZE
DEFAULT_MAX_PAYLOAD = 65536 + 64  # a 64 KiB block transfer plus its message fields
MAX_ERRORS_KEPT = 64  # pop_errors() keeps only the newest rejections
CRC_IMPLEMENTATION = "crc32c package"  # which CRC32C loop this module runs

_HEADER = struct.Struct("<BBHII")
_U32 = struct.Struct("<I")


class FrameError(ValueError):
    """A frame was rejected; the stream stays usable."""


class FrameCOBSError(FrameError):
    """The COBS stuffing is broken (a code byte points past the frame, or a 0x00 inside it)."""


class FrameTooShortError(FrameError):
    """Fewer bytes than a header and a CRC trailer."""


class FrameLengthError(FrameError):
    """The header's length field disagrees with the bytes received."""


class FrameCRCError(FrameError):
    """The CRC32C trailer does not match header and payload."""


class FrameTooLargeError(FrameError):
    """The payload is larger than the receiver accepts."""


def crc32c(data, value: int = 0) -> int:
    """CRC32C (Castagnoli, reflected, init and xorout 0xFFFFFFFF) of ``data``, continuing from ``value``."""
    return _crc32c(data, value)


def cobs_max_encoded(n: int) -> int:
    """Upper bound of the COBS encoding of ``n`` bytes (without the delimiter)."""
    return n + n // 254 + 1


def cobs_encode(data) -> bytes:
    """COBS-encode ``data``: no 0x00 in the result; every zero-run segment ends with a code < 0xFF."""
    out = bytearray()
    for seg in bytes(data).split(b"\x00"):
        while len(seg) >= 254:
            out.append(0xFF)
            out += seg[:254]
            seg = seg[254:]
        out.append(len(seg) + 1)
        out += seg
    return bytes(out)


def cobs_decode(data) -> bytes:
    """Decode one COBS block (no delimiter); raise FrameCOBSError when it is malformed."""
    src = bytes(data)
    n = len(src)
    out = bytearray()
    i = 0
    while i < n:
        code = src[i]
        if code == 0:
            raise FrameCOBSError(f"0x00 inside a COBS frame at byte {i}")
        end = i + code
        if end > n:
            raise FrameCOBSError(f"COBS code {code} at byte {i} runs past the end of the {n}-byte frame")
        block = src[i + 1:end]
        if 0 in block:
            raise FrameCOBSError(f"0x00 inside a COBS frame at byte {i + 1 + block.index(0)}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_header(version: int, type: int, flags: int, seq: int, length: int) -> bytes:
    """The 12-byte header; every field is range-checked (ValueError)."""
    if not (0 <= version <= 0xFF and 0 <= type <= 0xFF and 0 <= flags <= 0xFFFF
            and 0 <= seq <= 0xFFFFFFFF and 0 <= length <= 0xFFFFFFFF):
        raise ValueError(f"header field out of range: version={version} type={type} flags={flags} "
                         f"seq={seq} length={length}")
    return _HEADER.pack(version, type, flags, seq, length)


def decode_header(data) -> tuple:
    """(version, type, flags, seq, length) from the first 12 bytes of ``data``."""
    if len(data) < HEADER_SIZE:
        raise FrameTooShortError(f"header needs {HEADER_SIZE} bytes, got {len(data)}")
    return _HEADER.unpack_from(data, 0)


def encode_frame(type: int, flags: int, seq: int, payload=b"", version: int = VERSION) -> bytes:
    """The wire bytes of one frame, delimiter included."""
    raw = bytearray(encode_header(version, type, flags, seq, len(payload)))
    raw += payload
    raw += _U32.pack(_crc32c(raw))
    return cobs_encode(raw) + b"\x00"


def _check_raw(raw: bytes, max_payload: int) -> tuple:
    n = len(raw)
    if n < OVERHEAD:
        raise FrameTooShortError(f"frame of {n} bytes is shorter than header and CRC ({OVERHEAD})")
    version, type_, flags, seq, length = _HEADER.unpack_from(raw, 0)
    if length > max_payload:
        raise FrameTooLargeError(f"payload of {length} bytes exceeds the limit of {max_payload}")
    if length != n - OVERHEAD:
        raise FrameLengthError(f"header says {length} payload bytes, frame carries {n - OVERHEAD}")
    want = _U32.unpack_from(raw, n - TRAILER_SIZE)[0]
    got = _crc32c(memoryview(raw)[:n - TRAILER_SIZE])
    if want != got:
        raise FrameCRCError(f"CRC32C mismatch: trailer {want:#010x}, computed {got:#010x}")
    return version, type_, flags, seq, raw[HEADER_SIZE:n - TRAILER_SIZE]


def decode_frame(wire, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple:
    """(version, type, flags, seq, payload) of one wire frame, with or without its delimiter."""
    src = bytes(wire)
    if src.endswith(b"\x00"):
        src = src[:-1]
    if len(src) > cobs_max_encoded(max_payload + OVERHEAD):
        raise FrameTooLargeError(f"frame of {len(src)} wire bytes exceeds the limit for {max_payload}-byte payloads")
    return _check_raw(cobs_decode(src), max_payload)


class FrameDecoder:
    """Streaming decoder: ``feed`` bytes as they arrive, get whole frames back.

    Frames end at 0x00. A chunk that fails to decode is counted (``rejected``,
    ``garbage_bytes`` and one per-kind counter) and kept for ``pop_errors``;
    decoding resumes after the next delimiter. Bytes beyond the largest legal
    frame without a delimiter are discarded up to the next one (``oversized``).
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        if max_payload < 0:
            raise ValueError(f"max_payload must be >= 0, got {max_payload}")
        self.max_payload = max_payload
        self.max_wire = cobs_max_encoded(max_payload + OVERHEAD)
        self._buf = bytearray()
        self._skipping = False
        self._errors: list = []
        self.frames = 0
        self.rejected = 0
        self.garbage_bytes = 0
        self.cobs_errors = 0
        self.short_errors = 0
        self.length_errors = 0
        self.crc_errors = 0
        self.oversized = 0

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a delimiter."""
        return len(self._buf)

    def reset(self) -> None:
        """Drop any partial frame (after a reconnect); counters are kept."""
        self._buf.clear()
        self._skipping = False

    def pop_errors(self) -> list:
        """The rejections since the last call, newest last (at most MAX_ERRORS_KEPT)."""
        errors, self._errors = self._errors, []
        return errors

    def _reject(self, exc: FrameError, nbytes: int) -> None:
        self.rejected += 1
        self.garbage_bytes += nbytes
        if isinstance(exc, FrameCOBSError):
            self.cobs_errors += 1
        elif isinstance(exc, FrameTooShortError):
            self.short_errors += 1
        elif isinstance(exc, FrameLengthError):
            self.length_errors += 1
        elif isinstance(exc, FrameCRCError):
            self.crc_errors += 1
        else:
            self.oversized += 1
        self._errors.append(exc)
        if len(self._errors) > MAX_ERRORS_KEPT:
            del self._errors[0]

    def feed(self, data) -> list:
        """Every complete frame in the stream so far, as (version, type, flags, seq, payload) tuples."""
        out = []
        buf = self._buf
        buf += data
        start = 0
        n = len(buf)
        while start < n:
            end = buf.find(0, start)
            if end < 0:
                break
            if self._skipping:
                self.garbage_bytes += end - start
                self._skipping = False
            elif end > start:
                chunk = bytes(buf[start:end])
                try:
                    if len(chunk) > self.max_wire:
                        raise FrameTooLargeError(f"frame of {len(chunk)} wire bytes exceeds the limit of "
                                                 f"{self.max_wire}")
                    out.append(_check_raw(cobs_decode(chunk), self.max_payload))
                    self.frames += 1
                except FrameError as exc:
                    self._reject(exc, len(chunk))
            start = end + 1
        del buf[:start]
        if len(buf) > self.max_wire:
            if not self._skipping:
                self._reject(FrameTooLargeError(f"more than {self.max_wire} bytes without a delimiter"), 0)
                self._skipping = True
            self.garbage_bytes += len(buf)
            buf.clear()
        return out
