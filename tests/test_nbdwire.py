"""The NBD request scanner: both implementations against a struct-based reading of the wire."""
from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kernel_params
from splitpoint import pyx

MAGIC = 0x25609513
REQ = struct.Struct(">IHHQQI")


@pytest.fixture(params=kernel_params("nbdwire"))
def impl(request):
    return request.param


def encode(requests):
    out = bytearray()
    for cmd, flags, cookie, offset, length, payload in requests:
        out += REQ.pack(MAGIC, flags, cmd, cookie, offset, length)
        if payload is not None:
            out += payload
    return bytes(out)


request_st = st.tuples(
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 99]),
    st.integers(0, 0xFFFF), st.integers(0, 2 ** 64 - 1), st.integers(0, 2 ** 64 - 1),
    st.integers(0, 300),
).map(lambda t: (t[0], t[1], t[2], t[3], t[4], bytes((t[2] + i) & 0xFF for i in range(t[4])) if t[0] == 1 else None))


def as_bytes(payload):
    return None if payload is None else bytes(payload)


@pytest.mark.parametrize("impl", kernel_params("nbdwire"))
@settings(max_examples=150, deadline=None)
@given(reqs=st.lists(request_st, max_size=12), lend_min=st.integers(1, 400), cut=st.integers(0, 10_000),
       lead=st.integers(0, 40))
def test_scan_returns_every_complete_request_and_stops_where_the_next_one_is_incomplete(impl, reqs, lend_min, cut,
                                                                                        lead):
    wire = encode(reqs)
    end = lead + min(cut, len(wire))
    buf = memoryview(bytearray(b"\xAA" * lead + wire + b"\x55" * 7))
    got, pos, want = impl.scan(buf, lead, end, lend_min, 1 << 26)
    # the reference: whole requests that fit in [lead, end)
    expect, at = [], lead
    for req in reqs:
        size = 28 + (req[4] if req[0] == 1 else 0)
        if at + size > end:
            break
        expect.append(req)
        at += size
    assert [(*r[:5], as_bytes(r[5])) for r in got] == expect
    assert pos == at
    if len(expect) < len(reqs):
        nxt = reqs[len(expect)]
        assert want == (28 + nxt[4] if nxt[0] == 1 and end - at >= 28 else 28)
    else:
        assert want == 28
    for r in got:
        if r[0] == 1:
            assert isinstance(r[5], memoryview if r[4] >= lend_min else bytes)


def test_lent_payloads_are_slices_of_the_buffer_not_copies(impl):
    buf = memoryview(np.zeros(28 + 64, dtype=np.uint8))
    buf[:] = encode([(1, 0, 7, 4096, 64, bytes(64))])
    (req,), pos, want = impl.scan(buf, 0, len(buf), 32, 1 << 26)
    buf[28] = 9
    assert req[5][0] == 9 and (pos, want) == (92, 28)


@pytest.mark.parametrize("wire, pos, count", [
    (encode([(0, 0, 1, 0, 512, None)]) + REQ.pack(0x12345678, 0, 0, 2, 0, 512), 28, 1),
    (encode([(3, 0, 1, 0, 0, None)]) + REQ.pack(MAGIC, 0, 1, 2, 0, 1 << 27), 28, 1),
    (REQ.pack(0, 0, 0, 0, 0, 0), 0, 0),
])
def test_scan_leaves_a_bad_magic_or_an_oversized_write_to_the_caller(impl, wire, pos, count):
    got, stop, want = impl.scan(wire, 0, len(wire), 1 << 20, 1 << 26)
    assert (len(got), stop, want) == (count, pos, 0)


@pytest.mark.parametrize("pos, end", [(-1, 10), (5, 4), (0, 100)])
def test_scan_refuses_a_range_outside_the_buffer(impl, pos, end):
    with pytest.raises(ValueError, match="inside a buffer of 56 bytes"):
        impl.scan(bytes(56), pos, end, 1, 1 << 26)


def test_both_implementations_are_registered():
    assert "nbdwire" in pyx.KERNELS
    assert pyx.twin("nbdwire").scan is not None
