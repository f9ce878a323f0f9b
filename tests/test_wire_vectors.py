"""splitpoint.hal.wire.messages: every message type against the v1 vectors, round trips, and rejections."""
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx
from splitpoint.hal import wire
from splitpoint.hal.wire import ErrorCode, Flag, MsgType

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "vectors", "wire_v1.json")))
SETTINGS = settings(max_examples=40, deadline=None)


@pytest.mark.parametrize("case", VECTORS["messages"], ids=lambda c: c["name"])
def test_message_vectors_both_ways(case):
    wire_bytes = bytes.fromhex(case["wire"])
    msg = wire.from_json(case["message"])
    assert msg.encode() == wire_bytes
    decoded = wire.decode_wire(wire_bytes)
    assert decoded == msg
    assert wire.to_json(decoded) == case["message"]
    for fr in pyx.available("frame"):  # every kernel frames the message identically
        assert fr.encode_frame(msg.type, msg.flags, msg.seq, msg.payload()) == wire_bytes


def test_every_message_type_has_a_vector():
    assert {c["message"]["type"] for c in VECTORS["messages"]} == {t.name for t in MsgType}
    assert {c["message"].get("of") for c in VECTORS["messages"] if c["message"]["type"] == "ACK"} >= \
        {"INFO", "READ", "WRITE"}


MESSAGE_ERRORS = {"UnsupportedVersionError": wire.UnsupportedVersionError, "UnknownTypeError": wire.UnknownTypeError,
                  "BadPayloadError": wire.BadPayloadError}


@pytest.mark.parametrize("case", [c for c in VECTORS["invalid"] if c["error"] in MESSAGE_ERRORS],
                         ids=lambda c: c["name"])
def test_invalid_message_vectors(case):
    raw = bytes.fromhex(case["wire"])
    with pytest.raises(MESSAGE_ERRORS[case["error"]]) as info:
        wire.decode_wire(raw)
    frm = pyx.select("frame").decode_frame(raw)
    assert info.value.seq == frm[3] and info.value.type == frm[1]  # enough to answer ERROR
    assert info.value.code in set(ErrorCode)


@pytest.mark.parametrize("case", [c for c in VECTORS["invalid"] if c["error"] not in MESSAGE_ERRORS],
                         ids=lambda c: c["name"])
def test_invalid_frames_surface_as_frame_errors(case):
    with pytest.raises(pyx.select("frame").FrameError):
        wire.decode_wire(bytes.fromhex(case["wire"]))


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
label = st.text(max_size=20).filter(lambda s: len(s.encode()) <= wire.MAX_LABEL)
info = st.builds(wire.BoardInfo, capacity=u64, block_size=st.sampled_from([512, 4096]), max_transfer=u32,
                 window=st.integers(1, 32), features=u32, firmware=u32, session=u32, next_seq=u32,
                 board_id=st.text(alphabet="abcdefxyz-_0123456789", max_size=32), proto_min=st.just(1),
                 proto_max=st.just(1))
messages = st.one_of(
    st.builds(wire.Info, seq=u32, flags=st.sampled_from([0, Flag.RETRANSMIT]), session=u32, first_seq=u32),
    st.builds(wire.Read, seq=u32, offset=u64, length=u32),
    st.builds(wire.Write, seq=u32, flags=st.sampled_from([0, Flag.FUA, Flag.FUA | Flag.RETRANSMIT]), offset=u64,
              data=st.binary(max_size=1500)),
    st.builds(wire.Flush, seq=u32),
    st.builds(wire.Trim, seq=u32, flags=st.sampled_from([0, Flag.ZEROES, Flag.ZEROES | Flag.FUA]), offset=u64,
              length=u32),
    st.builds(wire.Trigger, seq=u32, id=u64, label=label),
    st.builds(wire.Ack, seq=u32, flags=st.sampled_from([0, Flag.REPLAY]),
              of=st.sampled_from([MsgType.WRITE, MsgType.FLUSH, MsgType.TRIM, MsgType.TRIGGER])),
    st.builds(wire.Ack, seq=u32, of=st.just(MsgType.READ), data=st.binary(max_size=1500)),
    st.builds(wire.Ack, seq=u32, of=st.just(MsgType.INFO), info=info),
    st.builds(wire.Error, seq=u32, flags=st.sampled_from([0, Flag.REPLAY]),
              of=st.sampled_from(sorted(wire.REQUEST_TYPES)), code=st.sampled_from(list(ErrorCode)),
              message=st.text(alphabet="abc xyz:0123", max_size=100)),
    st.builds(wire.Nak, seq=st.just(0), expected=u32, received=u32),
)


@SETTINGS
@given(msg=messages)
def test_every_message_round_trips(msg):
    raw = msg.encode()
    assert wire.decode_wire(raw) == msg
    assert wire.from_json(json.loads(json.dumps(wire.to_json(msg)))) == msg


@SETTINGS
@given(msg=messages, data=st.data())
def test_truncated_or_padded_payload_is_bad_payload_not_a_crash(msg, data):
    fr = pyx.select("frame")
    payload = msg.payload()
    cut = data.draw(st.integers(0, len(payload)))
    extra = data.draw(st.binary(min_size=0, max_size=3))
    mangled = payload[:cut] + extra
    try:
        got = wire.decode_wire(fr.encode_frame(msg.type, msg.flags, msg.seq, mangled))
    except wire.WireError as exc:
        assert exc.seq == msg.seq
        return
    assert got.type == msg.type  # variable-length payloads (data, labels, text) may still be valid


def test_flags_and_limits_are_checked():
    with pytest.raises(ValueError):
        wire.Trigger(seq=1, id=1, label="x" * 65).encode()
    with pytest.raises(ValueError):
        wire.BoardInfo(1, 512, 512, 1, board_id="b" * 33).pack()
    with pytest.raises(wire.BadPayloadError):
        wire.decode_wire(pyx.select("frame").encode_frame(MsgType.READ, Flag.FUA, 1, bytes(12)))
    with pytest.raises(wire.BadPayloadError):  # ACK naming a reply type
        wire.decode_wire(pyx.select("frame").encode_frame(MsgType.ACK, 0, 1, bytes([MsgType.NAK])))
    assert wire.Error(seq=1, message="é" * 200).payload()[3:] == ("é" * 64).encode()
    assert wire.decode_wire(wire.Error(seq=1, message="x" + "é" * 200).encode()).message == "x" + "é" * 63


def test_serial_arithmetic_wraps():
    assert wire.seq_after(0, 0xFFFFFFFF) == 1
    assert wire.seq_after(0xFFFFFFFF, 0) == -1
    assert wire.seq_add(0xFFFFFFFF, 2) == 1
    assert wire.version_string(wire.pack_version("1.2.3")) == "1.2.3"
    with pytest.raises(ValueError):
        wire.pack_version("1.256.0")


def test_frames_carry_the_labels_the_trigger_rules_allow():
    from splitpoint.firmware import triggers

    assert wire.MAX_LABEL == triggers.LABEL_MAX
