"""The C firmware's wire codec against the repository's test vectors, byte for byte, and its answers
to malformed frames (through the cffi host build of boards/firmware/core)."""
import json
import os

import pytest

from splitpoint.boards.firmware.cboard import CBoard, ffi, lib
from splitpoint.hal import wire
from splitpoint.hal.wire import ErrorCode, MsgType

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "vectors", "wire_v1.json")))
FRAME_STATUS = {0: None, 1: "FrameCOBSError", 2: "FrameTooShortError", 3: "FrameTooLargeError",
                4: "FrameLengthError", 5: "FrameCRCError"}
DEFAULT_MAX_PAYLOAD = 65536 + 64


def c_cobs_encode(raw: bytes) -> bytes:
    dst = ffi.new("uint8_t[]", len(raw) + len(raw) // 254 + 1)
    n = lib.sp_cobs_encode(raw, len(raw), dst, len(dst))
    assert n, "encoder refused a buffer of the documented bound"
    return bytes(ffi.buffer(dst, n))


def c_decode(wire_bytes: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD):
    """(status name or None, raw bytes) of one wire frame, its delimiter cut."""
    chunk = wire_bytes[:-1] if wire_bytes.endswith(b"\0") else wire_bytes
    out = ffi.new("uint8_t[]", len(chunk) + 1)
    n = ffi.new("size_t *")
    st = lib.sp_host_decode_wire(chunk, len(chunk), max_payload, out, len(out), n)
    return FRAME_STATUS[st], bytes(ffi.buffer(out, n[0])) if st == 0 else b""


def c_encode(version, type_, flags, seq, payload) -> bytes:
    scratch = ffi.new("uint8_t[]", len(payload) + 16)
    dst = ffi.new("uint8_t[]", 2 * len(payload) + 64)
    n = lib.sp_frame_encode(version, type_, flags, seq, payload, len(payload), scratch, len(scratch), dst, len(dst))
    assert n
    return bytes(ffi.buffer(dst, n))


@pytest.mark.parametrize("case", VECTORS["cobs"], ids=lambda c: c["name"])
def test_cobs_vectors(case):
    raw, enc = bytes.fromhex(case["raw"]), bytes.fromhex(case["cobs"])
    assert c_cobs_encode(raw) == enc
    out = ffi.new("uint8_t[]", len(enc) + 1)
    n = ffi.new("size_t *")
    assert lib.sp_cobs_decode(enc, len(enc), out, len(out), n) == 0
    assert bytes(ffi.buffer(out, n[0])) == raw


def test_cobs_encoder_refuses_a_short_buffer():
    dst = ffi.new("uint8_t[]", 254)
    assert lib.sp_cobs_encode(b"\x01" * 254, 254, dst, len(dst)) == 0   # needs 256


@pytest.mark.parametrize("case", VECTORS["crc32c"], ids=lambda c: c["name"])
def test_crc_vectors(case):
    data = bytes.fromhex(case["data"])
    assert lib.sp_crc32c(0, data, len(data)) == case["crc32c"]
    half = len(data) // 2
    assert lib.sp_crc32c(lib.sp_crc32c(0, data[:half], half), data[half:], len(data) - half) == case["crc32c"]


@pytest.mark.parametrize("case", VECTORS["messages"], ids=lambda c: c["name"])
def test_message_vectors_byte_for_byte(case):
    wire_bytes = bytes.fromhex(case["wire"])
    status, raw = c_decode(wire_bytes)
    assert status is None
    msg = wire.from_json(case["message"])
    assert raw[0] == 1 and raw[1] == msg.type and int.from_bytes(raw[2:4], "little") == msg.flags
    assert int.from_bytes(raw[4:8], "little") == msg.seq
    assert raw[12:-4] == msg.payload()            # the fields decode to exactly the vector's payload
    assert c_encode(1, msg.type, msg.flags, msg.seq, msg.payload()) == wire_bytes
    if msg.type < 0x80:
        assert lib.sp_host_message_check(raw, len(raw)) == 0


FRAME_ERRORS = set(FRAME_STATUS.values()) - {None}


@pytest.mark.parametrize("case", [c for c in VECTORS["invalid"] if c["error"] in FRAME_ERRORS],
                         ids=lambda c: c["name"])
def test_invalid_frame_vectors(case):
    assert c_decode(bytes.fromhex(case["wire"]))[0] == case["error"]


MESSAGE_ERRORS = {"UnsupportedVersionError": ErrorCode.UNSUPPORTED_VERSION, "UnknownTypeError": ErrorCode.UNKNOWN_TYPE,
                  "BadPayloadError": ErrorCode.BAD_PAYLOAD}


@pytest.mark.parametrize("case", [c for c in VECTORS["invalid"] if c["error"] in MESSAGE_ERRORS],
                         ids=lambda c: c["name"])
def test_invalid_message_vectors_get_the_protocols_error_in_turn(case):
    """A malformed request is answered ERROR with the vector's code, in its seq's turn; a malformed
    reply travelling the wrong way is never answered."""
    wire_bytes = bytes.fromhex(case["wire"])
    status, raw = c_decode(wire_bytes)
    assert status is None
    type_, seq = raw[1], int.from_bytes(raw[4:8], "little")
    board = CBoard(capacity=1 << 16, pool_members=1)
    board.data_in(wire.Info(seq=99, session=7, first_seq=seq).encode())
    out = board.data_in(wire_bytes)
    if type_ >= 0x80:
        assert out == b""
        return
    assert lib.sp_host_message_check(raw, len(raw)) == MESSAGE_ERRORS[case["error"]]
    reply = wire.decode_wire(out)
    assert isinstance(reply, wire.Error)
    assert (reply.seq, reply.of, reply.code) == (seq, type_, MESSAGE_ERRORS[case["error"]])
    nxt = board.data_in(wire.Flush(seq=(seq + 1) & 0xFFFFFFFF).encode())   # the next seq is not held up
    assert isinstance(wire.decode_wire(nxt), wire.Ack)


def test_stream_vector_frames_and_rejections():
    case = VECTORS["stream"]
    board = CBoard(capacity=1 << 16, pool_members=1)
    out = board.data_in(bytes.fromhex(case["stream"]))
    st = board.status()
    assert st["frames"] == len(case["frames"])
    assert st["rejected_frames"] == case["rejected"]
    assert st["garbage_bytes"] == case["garbage_bytes"]
    replies = [wire.decode_wire(f + b"\0") for f in out.split(b"\0")[:-1]]
    # before any handshake every request is answered NO_SESSION, each with its own seq
    want = [wire.decode_wire(bytes.fromhex(f)) for f in case["frames"]]
    assert [(r.seq, r.of, r.code) for r in replies] == [(m.seq, m.type, ErrorCode.NO_SESSION) for m in want]


def test_ack_of_info_is_the_vector_byte_for_byte():
    case = next(c for c in VECTORS["messages"] if c["name"] == "ACK of INFO")
    info = case["message"]["info"]
    board = CBoard(board_id=info["board_id"], capacity=info["capacity"], block_size=info["block_size"],
                   window=info["window"], max_transfer=info["max_transfer"], features=info["features"],
                   firmware=info["firmware"], pool_members=0)
    request = next(c for c in VECTORS["messages"] if c["name"] == "INFO handshake")
    assert board.data_in(bytes.fromhex(request["wire"])) == bytes.fromhex(case["wire"])


def _session(board, first_seq=1):
    ack = wire.decode_wire(board.data_in(wire.Info(seq=1234, session=0x5EED, first_seq=first_seq).encode()))
    assert isinstance(ack, wire.Ack) and ack.info.next_seq == first_seq
    return ack


@pytest.mark.parametrize("mangle", ["crc", "length", "cobs", "short"])
def test_malformed_frames_get_a_nak_and_change_nothing(mangle):
    board = CBoard(capacity=1 << 16, pool_members=1)
    good = wire.Write(seq=1, offset=0, data=b"\xAA" * 512).encode()
    assert board.data_in(good[:-1][:3]) == b""                 # no delimiter yet: nothing happens
    board.reset_link()
    assert board.data_in(good) and board.status()["session"] is None   # NO_SESSION, nothing written
    assert board.primary(0, 512) == bytes(512)
    _session(board)
    raw = bytearray(wire.frame.cobs_decode(good[:-1]))
    if mangle == "crc":
        raw[-1] ^= 1
        bad = wire.frame.cobs_encode(bytes(raw)) + b"\0"
    elif mangle == "length":
        raw[8] += 1
        bad = wire.frame.cobs_encode(bytes(raw)) + b"\0"
    elif mangle == "cobs":
        bad = good[:40] + b"\0"                                # torn: a code byte runs past the end
    else:
        bad = b"\x05\x01\x02\x03\x04\0"
    reply = wire.decode_wire(board.data_in(bad))
    assert isinstance(reply, wire.Nak) and (reply.expected, reply.received) == (1, 0)
    assert board.primary(0, 512) == bytes(512)
    assert board.status()["rejected_frames"] == 1
    assert isinstance(wire.decode_wire(board.data_in(good)), wire.Ack)
    assert board.primary(0, 512) == b"\xAA" * 512


def test_oversized_frame_without_delimiter_is_discarded_up_to_the_next():
    board = CBoard(capacity=1 << 16, pool_members=1, max_transfer=4096)
    _session(board)
    noise = b"\x01" * 10000                                    # far past max_transfer + 64 without a 0x00
    out = board.data_in(noise + b"\0")
    assert isinstance(wire.decode_wire(out), wire.Nak)
    st = board.status()
    assert st["rejected_frames"] == 1 and st["garbage_bytes"] == len(noise)
    assert isinstance(wire.decode_wire(board.data_in(wire.Flush(seq=1).encode())), wire.Ack)
