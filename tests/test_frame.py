"""The frame codec kernel, compiled and twin: vectors, round trips, corruption, streaming."""
import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx
from tests.conftest import kernel_params

VECTORS = json.load(open(os.path.join(os.path.dirname(__file__), "vectors", "wire_v1.json")))
SETTINGS = settings(max_examples=60, deadline=None)


@pytest.fixture(params=kernel_params("frame"))
def fr(request):
    return request.param


def test_both_kernels_share_the_exception_classes():
    mods = pyx.available("frame")
    for mod in mods:
        assert mod.FrameCRCError is mods[-1].FrameCRCError
        assert issubclass(mod.FrameCRCError, mod.FrameError)
        assert issubclass(mod.FrameError, ValueError)


@pytest.mark.parametrize("case", VECTORS["cobs"], ids=lambda c: c["name"])
def test_cobs_vectors(fr, case):
    raw, enc = bytes.fromhex(case["raw"]), bytes.fromhex(case["cobs"])
    assert fr.cobs_encode(raw) == enc
    assert fr.cobs_decode(enc) == raw
    assert len(enc) <= fr.cobs_max_encoded(len(raw))


@pytest.mark.parametrize("case", VECTORS["crc32c"], ids=lambda c: c["name"])
def test_crc_vectors(fr, case):
    data = bytes.fromhex(case["data"])
    assert fr.crc32c(data) == case["crc32c"]
    half = len(data) // 2
    assert fr.crc32c(data[half:], fr.crc32c(data[:half])) == case["crc32c"]


@pytest.mark.parametrize("case", VECTORS["messages"], ids=lambda c: c["name"])
def test_frame_vectors_byte_for_byte(fr, case):
    wire = bytes.fromhex(case["wire"])
    version, type_, flags, seq, payload = fr.decode_frame(wire)
    assert fr.encode_frame(type_, flags, seq, payload, version) == wire
    assert fr.decode_frame(wire[:-1]) == (version, type_, flags, seq, payload)  # delimiter optional


FRAME_ERRORS = {"FrameCRCError", "FrameLengthError", "FrameTooShortError", "FrameCOBSError", "FrameTooLargeError"}


@pytest.mark.parametrize("case", [c for c in VECTORS["invalid"] if c["error"] in FRAME_ERRORS],
                         ids=lambda c: c["name"])
def test_invalid_frame_vectors(fr, case):
    with pytest.raises(getattr(fr, case["error"])):
        fr.decode_frame(bytes.fromhex(case["wire"]))


def test_stream_vector(fr):
    case = VECTORS["stream"]
    dec = fr.FrameDecoder()
    frames = dec.feed(bytes.fromhex(case["stream"]))
    assert [fr.encode_frame(t, f, s, p, v).hex() for v, t, f, s, p in frames] == case["frames"]
    assert (dec.rejected, dec.garbage_bytes, dec.frames) == (case["rejected"], case["garbage_bytes"], 3)
    assert len(dec.pop_errors()) == 3 and dec.pop_errors() == []


def test_header_round_trip_and_range_checks(fr):
    h = fr.encode_header(1, 0x80, 0xBEEF, 0xFFFFFFFF, 65536)
    assert len(h) == fr.HEADER_SIZE == 12
    assert h.hex() == "0180efbeffffffff00000100"
    assert fr.decode_header(h) == (1, 0x80, 0xBEEF, 0xFFFFFFFF, 65536)
    for bad in [(256, 1, 0, 0, 0), (1, -1, 0, 0, 0), (1, 1, 0x10000, 0, 0), (1, 1, 0, 2**32, 0), (1, 1, 0, 0, -1)]:
        with pytest.raises(ValueError):
            fr.encode_header(*bad)
    with pytest.raises(fr.FrameTooShortError):
        fr.decode_header(h[:11])
    with pytest.raises(ValueError):
        fr.encode_frame(1, 0, 2**32)


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_cobs_round_trip_has_no_zero(data):
    for fr in pyx.available("frame"):
        enc = fr.cobs_encode(data)
        assert 0 not in enc
        assert len(enc) <= fr.cobs_max_encoded(len(data))
        assert fr.cobs_decode(enc) == data


@SETTINGS
@given(type_=st.integers(0, 255), flags=st.integers(0, 0xFFFF), seq=st.integers(0, 2**32 - 1),
       payload=st.binary(max_size=3000) | st.sampled_from([bytes(600), b"\xff" * 600, bytes(range(256)) * 3]),
       version=st.integers(0, 255))
def test_frame_round_trip_and_kernels_agree(type_, flags, seq, payload, version):
    wires = {fr.encode_frame(type_, flags, seq, payload, version) for fr in pyx.available("frame")}
    assert len(wires) == 1
    wire = wires.pop()
    assert wire.endswith(b"\x00") and 0 not in wire[:-1]
    for fr in pyx.available("frame"):
        assert fr.decode_frame(wire) == (version, type_, flags, seq, payload)


@SETTINGS
@given(payload=st.binary(max_size=600), seed=st.integers(0, 2**32), nflips=st.integers(1, 6))
def test_random_corruption_is_detected_never_a_crash(payload, seed, nflips):
    rng = random.Random(seed)
    for fr in pyx.available("frame"):
        wire = bytearray(fr.encode_frame(3, 1, 77, payload))
        for _ in range(nflips):
            i = rng.randrange(len(wire) - 1)
            wire[i] = rng.choice([wire[i] ^ (1 << rng.randrange(8)), rng.randrange(256)])
        try:
            got = fr.decode_frame(bytes(wire))
        except fr.FrameError:
            continue
        assert got == (1, 3, 1, 77, payload)  # only an undamaged frame may decode


@SETTINGS
@given(garbage=st.lists(st.binary(min_size=1, max_size=80), max_size=6), cuts=st.lists(st.integers(0, 5000)),
       payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=6))
def test_stream_resynchronises_after_garbage(garbage, cuts, payloads):
    frames = [pyx.twin("frame").encode_frame(3, 0, i, p) for i, p in enumerate(payloads)]
    stream = b""
    for i, f in enumerate(frames):
        if i < len(garbage):
            stream += garbage[i] + b"\x00"
        stream += f
    for fr in pyx.available("frame"):
        dec = fr.FrameDecoder()
        got = []
        last = 0
        for cut in sorted(c % (len(stream) + 1) for c in cuts) + [len(stream)]:
            got += dec.feed(stream[last:cut])
            last = cut
        assert [(s, p) for (_, _, _, s, p) in got] == list(enumerate(payloads))
        pieces = [p for g in garbage[:len(frames)] for p in g.split(b"\x00") if p]
        assert dec.rejected == len(pieces)
        assert dec.garbage_bytes == sum(len(p) for p in pieces)
        assert dec.frames == len(payloads) and dec.pending == 0


def test_garbage_counters_by_kind(fr):
    dec = fr.FrameDecoder(max_payload=64)
    good = fr.encode_frame(4, 0, 1)
    bad_crc = bytearray(good)
    bad_crc[-2] = 0x55 if bad_crc[-2] != 0x55 else 0x66  # a CRC byte (the last block is 4 CRC bytes here)
    stream = (b"\x00\x00" + good + b"\x05\x01\x00" + bytes(bad_crc) + fr.cobs_encode(b"\x01" * 8) + b"\x00"
              + fr.encode_frame(4, 0, 2, bytes(100)) + good)
    frames = dec.feed(stream)
    assert [f[3] for f in frames] == [1, 1]
    assert dec.cobs_errors == 1 and dec.short_errors == 1 and dec.crc_errors == 1
    assert dec.oversized == 1 and dec.rejected == 4
    kinds = {type(e) for e in dec.pop_errors()}
    assert fr.FrameTooLargeError in kinds and fr.FrameCOBSError in kinds


def test_oversized_run_without_delimiter_is_dropped_and_stream_recovers(fr):
    dec = fr.FrameDecoder(max_payload=100)
    assert dec.max_wire == 117
    assert dec.feed(b"\x01" * 80) == []
    assert dec.pending == 80
    assert dec.feed(b"\x02" * 100) == []  # past the limit: discarded, not buffered
    assert dec.pending == 0 and dec.oversized == 1
    assert dec.feed(b"\x03" * 5000) == []
    frames = dec.feed(b"\x00" + fr.encode_frame(4, 0, 9))
    assert [f[3] for f in frames] == [9]
    assert dec.garbage_bytes == 5180 and dec.rejected == 1


def test_frame_split_across_feeds_and_reset(fr):
    wire = fr.encode_frame(3, 0, 5, os.urandom(1000))
    dec = fr.FrameDecoder()
    for i in range(0, len(wire), 7):
        out = dec.feed(wire[i:i + 7])
    assert out and out[0][3] == 5
    dec.feed(wire[:50])
    dec.reset()
    assert dec.pending == 0
    assert dec.feed(wire)[0][3] == 5
    assert dec.rejected == 0


def test_decode_frame_limits(fr):
    wire = fr.encode_frame(3, 0, 1, bytes(200))
    with pytest.raises(fr.FrameTooLargeError):
        fr.decode_frame(wire, max_payload=100)
    with pytest.raises(fr.FrameTooShortError):
        fr.decode_frame(b"")
    with pytest.raises(fr.FrameCOBSError):
        fr.decode_frame(b"\x03\x01\x00\x01")  # a zero inside the frame
    assert fr.decode_frame(wire, max_payload=200)[4] == bytes(200)


def test_buffers_of_any_kind(fr):
    payload = bytearray(b"abc\x00def")
    wire = fr.encode_frame(3, 0, 1, memoryview(payload))
    assert fr.decode_frame(bytearray(wire))[4] == bytes(payload)
    assert fr.crc32c(memoryview(b"123456789")) == 0xE3069283


def test_portable_crc_table_loop_matches_the_vectors():
    """The table loop (what the board firmware runs) gives the same CRCs as the SSE4.2 one."""
    import subprocess
    import sys

    compiled = pyx.compiled("frame")
    if compiled is None:
        pytest.skip("frame kernel not built")
    code = ("import json,sys; from splitpoint.pyx import frame as f; d=json.load(open(sys.argv[1])); "
            "assert f.CRC_IMPLEMENTATION == 'table'; "
            "assert all(f.crc32c(bytes.fromhex(c['data'])) == c['crc32c'] for c in d['crc32c']); "
            "assert all(f.encode_frame(*f.decode_frame(bytes.fromhex(m['wire']))[1:], "
            "f.decode_frame(bytes.fromhex(m['wire']))[0]).hex() == m['wire'] for m in d['messages']); "
            "import os; b=os.urandom(100003); import crc32c; assert f.crc32c(b) == crc32c.crc32c(b); print('ok')")
    path = os.path.join(os.path.dirname(__file__), "vectors", "wire_v1.json")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         env=dict(os.environ, SPLITPOINT_CRC_TABLE="1"))
    assert out.stdout.strip() == "ok", out.stderr
