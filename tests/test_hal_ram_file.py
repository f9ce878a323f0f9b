"""The HAL contract on the ram:// and file:// backends."""
import os

import pytest

from splitpoint import hal
from splitpoint.hal import (BadURLError, DeviceClosedError, MisalignedError, OutOfRangeError, ReadOnlyError,
                            ZeroLengthError, open_device)


@pytest.fixture(params=["ram", "file"])
def device(request, tmp_path):
    if request.param == "ram":
        dev = open_device("ram://?size=1M&block=4096")
    else:
        dev = open_device(f"file://{tmp_path}/lun.img?size=1M&block=4096&create=1")
    yield dev
    dev.close()


def test_geometry(device):
    assert device.size == 1 << 20
    assert device.block_size == 4096
    assert device.read(0, 8192) == bytes(8192)


def test_write_read_roundtrip(device):
    data = os.urandom(8192)
    device.write(4096, data)
    assert device.read(4096, 8192) == data
    buf = bytearray(4096)
    device.readinto(8192, buf)
    assert bytes(buf) == data[4096:]


def test_trim_and_zeroes_read_back_zero(device):
    device.write(0, b"\xff" * 16384)
    device.trim(0, 4096)
    device.write_zeroes(8192, 4096, fua=True)
    got = device.read(0, 16384)
    assert got == bytes(4096) + b"\xff" * 4096 + bytes(4096) + b"\xff" * 4096


@pytest.mark.parametrize("offset,length,error", [
    (0, 0, ZeroLengthError),
    (1 << 20, 4096, OutOfRangeError),
    ((1 << 20) - 4096, 8192, OutOfRangeError),
    (2**63, 4096, OutOfRangeError),
    (-4096, 4096, OutOfRangeError),
    (512, 4096, MisalignedError),
    (0, 100, MisalignedError),
])
def test_bad_io_is_specific(device, offset, length, error):
    with pytest.raises(error):
        device.read(offset, length)
    with pytest.raises(error):
        device.write(offset, bytes(max(length, 0)))
    assert device.read(0, 4096) == bytes(4096)  # nothing disturbed


def test_closed_device(device):
    device.close()
    with pytest.raises(DeviceClosedError):
        device.read(0, 4096)


def test_read_only(tmp_path):
    dev = open_device("ram://?size=64K&readonly=1")
    with pytest.raises(ReadOnlyError):
        dev.write(0, bytes(512))
    with pytest.raises(ReadOnlyError):
        dev.trim(0, 512)


@pytest.mark.parametrize("url,words", [
    ("ram://?size=1M&bogus=1", ["bogus", "ram://[NAME]?size=SIZE"]),
    ("ram://?size=1000&block=512", ["multiple"]),
    ("ram://?size=1M&block=1000", ["power of two"]),
    ("ram://?size=lots", ["bad size"]),
    ("nope://x", ["unknown device scheme", "ram"]),
    ("just-a-path", ["not a device URL"]),
    ("file://relative/x.img", ["absolute path"]),
    ("file:///nonexistent/dir/x.img?size=1M", ["cannot open"]),
])
def test_bad_urls_name_the_problem(url, words):
    with pytest.raises(BadURLError) as info:
        open_device(url)
    for word in words:
        assert word in str(info.value)


def test_file_is_sparse_and_persists(tmp_path):
    path = tmp_path / "big.img"
    dev = open_device(f"file://{path}?size=1G&create=1")
    dev.write(512 * 1000, b"x" * 512, fua=True)
    dev.close()
    assert os.stat(path).st_blocks * 512 < 1 << 20  # sparse
    again = open_device(f"file://{path}")
    assert again.size == 1 << 30
    assert again.read(512 * 1000, 512) == b"x" * 512
    again.close()


def test_size_mismatch_is_refused(tmp_path):
    path = tmp_path / "a.img"
    open_device(f"file://{path}?size=1M&create=1").close()
    with pytest.raises(BadURLError, match="not the"):
        open_device(f"file://{path}?size=2M")


def test_template_shows_every_hook():
    from splitpoint.hal.template import TemplateDevice
    hooks = ["read", "write", "flush", "trim", "write_zeroes", "close"]
    for hook in hooks:
        assert hook in TemplateDevice.__dict__, hook
    with pytest.raises(NotImplementedError):
        TemplateDevice(4096).read(0, 512)
    assert set(hal.BACKENDS) >= {"ram", "file"}


def test_persistent_and_buffer_are_attributes_of_the_contract(tmp_path):
    ram = open_device("ram://?size=64K")
    disk = open_device(f"file://{tmp_path}/p.img?size=64K&create=1")
    wrapped = open_device("ram://?size=64K&faults=drop=1,seed=1")
    try:
        assert (ram.persistent, disk.persistent, wrapped.persistent) == (False, True, False)
        assert ram.buffer() is not None and disk.buffer() is None
        assert wrapped.buffer() is None   # a filter never lets a kernel bypass it
        assert bytes(ram.buffer()[0:512]) == bytes(512)
    finally:
        for dev in (ram, disk, wrapped):
            dev.close()


@pytest.mark.parametrize("src_scheme", ["ram", "file"])
def test_copy_from_moves_the_extents_and_only_them(tmp_path, src_scheme):
    """A resync's data mover: file <- file in the kernel, file <- ram through write(); same bytes either way."""
    src = (open_device("ram://?size=1M&block=4096") if src_scheme == "ram"
           else open_device(f"file://{tmp_path}/src.img?size=1M&block=4096&create=1"))
    dst = open_device(f"file://{tmp_path}/dst.img?size=1M&block=4096&create=1")
    try:
        src.write(0, os.urandom(1 << 20))
        dst.write(0, b"\xee" * (1 << 20))
        assert dst.copy_from(src, [(4096, 8192), (1 << 19, 65536)]) == 8192 + 65536
        got, want = dst.read(0, 1 << 20), bytearray(b"\xee" * (1 << 20))
        want[4096:12288] = src.read(4096, 8192)
        want[1 << 19:(1 << 19) + 65536] = src.read(1 << 19, 65536)
        assert got == bytes(want)
    finally:
        src.close()
        dst.close()


def test_copy_from_keeps_the_destinations_contract(tmp_path):
    src = open_device(f"file://{tmp_path}/src.img?size=1M&block=4096&create=1")
    dst = open_device(f"file://{tmp_path}/dst.img?size=1M&block=4096&create=1")
    small = open_device(f"file://{tmp_path}/small.img?size=64K&block=4096&create=1")
    try:
        with pytest.raises(OutOfRangeError):
            small.copy_from(src, [(0, 131072)])            # past the destination's end
        with pytest.raises(OutOfRangeError):
            src.copy_from(small, [(0, 131072)])            # past the source's end
        with pytest.raises(MisalignedError):
            dst.copy_from(src, [(100, 4096)])
        src.close()
        with pytest.raises(DeviceClosedError):
            dst.copy_from(src, [(0, 4096)])
        dst.close()
        ro = open_device(f"file://{tmp_path}/dst.img?readonly=1")
        other = open_device(f"file://{tmp_path}/small.img")
        with pytest.raises(ReadOnlyError):
            ro.copy_from(other, [(0, 4096)])
        ro.close()
        other.close()
    finally:
        small.close()


def test_copy_from_through_a_filter_goes_through_the_filter(tmp_path):
    """A fault filter on the destination sees every byte of the copy: no kernel shortcut past it."""
    src = open_device(f"file://{tmp_path}/src.img?size=1M&block=4096&create=1")
    dst = open_device(f"file://{tmp_path}/dst.img?size=1M&block=4096&create=1&faults=error=1.0")
    try:
        with pytest.raises(hal.HalError):
            dst.copy_from(src, [(0, 4096)])
    finally:
        src.close()
        dst.close()
