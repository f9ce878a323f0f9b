"""The stripe split arithmetic (hal/stripe.py) against a byte-by-byte reference, and a striped device over RAM parts."""
import pytest
from hypothesis import given, settings, strategies as st

from splitpoint.hal import open_device
from splitpoint.hal.contract import OutOfRangeError
from splitpoint.hal.stripe import StripedDevice, StripeLayout, StripeLayoutError


def reference_place(byte: int, stripe: int, nparts: int) -> tuple[int, int]:
    """Where one LUN byte lives, counted unit by unit: (part, part offset)."""
    unit = 0
    pos = 0
    while pos + stripe <= byte:
        pos += stripe
        unit += 1
    return unit % nparts, (unit // nparts) * stripe + (byte - pos)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8).map(lambda k: k * 512), st.integers(1, 5), st.integers(0, 40 * 512),
       st.integers(1, 20 * 512))
def test_split_places_every_byte_as_the_reference(stripe, nparts, offset, length):
    pieces = StripeLayout(stripe, nparts).split(offset, length)
    assert sum(n for *_x, n in pieces) == length
    pos = offset
    for part, poff, loff, n in pieces:
        assert loff == pos and n > 0
        assert poff // stripe == (poff + n - 1) // stripe   # one piece stays in one stripe unit
        for b in {loff, loff + n - 1}:
            assert reference_place(b, stripe, nparts) == (part, poff + (b - loff))
        pos += n


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 63), st.integers(1, 16), st.integers(0, 255)), min_size=1, max_size=12))
def test_striped_device_reads_back_as_one_flat_device(writes):
    parts = [open_device("ram://?size=32K") for _ in range(3)]
    dev = StripedDevice(parts, 1024)
    flat = bytearray(dev.size)
    for blk, nblk, val in writes:
        off, ln = blk * 512, nblk * 512
        if off + ln > dev.size:
            continue
        dev.write(off, bytes([val]) * ln)
        flat[off:off + ln] = bytes([val]) * ln
    assert dev.read(0, dev.size) == bytes(flat)
    # each part holds exactly its units
    for part, poff, loff, n in dev.layout.split(0, dev.size):
        assert parts[part].read(poff, n) == bytes(flat[loff:loff + n])


def test_size_is_whole_rows_of_the_smallest_part():
    parts = [open_device("ram://?size=33K"), open_device("ram://?size=40K")]
    dev = StripedDevice(parts, 4096)
    assert dev.size == 2 * 8 * 4096


def test_bad_layouts_are_refused():
    with pytest.raises(StripeLayoutError, match="multiple of the block size"):
        StripeLayout(1000, 2, 512)
    with pytest.raises(StripeLayoutError, match="at least one part"):
        StripeLayout(4096, 0)
    with pytest.raises(StripeLayoutError, match="same block size"):
        StripedDevice([open_device("ram://?size=64K"), open_device("ram://?size=64K&block=4096")], 4096)
    with pytest.raises(StripeLayoutError, match="no whole"):
        StripedDevice([open_device("ram://?size=4K"), open_device("ram://?size=64K")], 8192)


def test_out_of_range_is_the_contract_error():
    dev = StripedDevice([open_device("ram://?size=64K") for _ in range(2)], 4096)
    with pytest.raises(OutOfRangeError):
        dev.write(dev.size - 512, bytes(1024))


def test_trim_and_zeroes_reach_each_part():
    parts = [open_device("ram://?size=64K") for _ in range(2)]
    dev = StripedDevice(parts, 4096)
    dev.write(0, b"\xff" * 16384)
    dev.write_zeroes(4096, 8192)
    got = dev.read(0, 16384)
    assert got == b"\xff" * 4096 + bytes(8192) + b"\xff" * 4096
    assert parts[1].read(0, 4096) == bytes(4096) and parts[0].read(4096, 4096) == bytes(4096)
