"""The memory-device request path (``splitpoint.pyx.select("memlun")``): both implementations
against a plain model, and against each other."""
from __future__ import annotations

import pytest
from conftest import kernel_params
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx

SIZE = 64 << 10
BS = 512
CS = 4096


@pytest.fixture(params=kernel_params("memlun"))
def kern(request):
    """(memlun, epochmap) of one implementation: a compiled MemoryLun marks compiled maps."""
    mod = request.param
    em = pyx.twin("epochmap") if mod.__name__.endswith("_py") else pyx.compiled("epochmap")
    return mod, em


def make(kern, mirror=True, zeros=False, size=SIZE):
    mod, em = kern
    primary = memoryview(bytearray(size))
    mir = memoryview(bytearray(size)) if mirror else None
    epochs = em.EpochMap(size, CS)
    bits = em.ChunkBitmap(size, CS)
    if zeros:
        bits.set_all()
    lun = mod.MemoryLun(primary, mir, epochs, bits if zeros else None, size, BS)
    return lun, primary, mir, epochs, bits


def test_write_copies_into_primary_and_mirror_and_marks(kern):
    lun, primary, mir, epochs, bits = make(kern, zeros=True)
    data = bytes(range(256)) * 4
    assert lun.write(CS + 512, 1024, data, 7) is True
    assert bytes(primary[CS + 512:CS + 1536]) == data
    assert bytes(mir[CS + 512:CS + 1536]) == data
    assert epochs.get(1) == 7 and epochs.get(0) == 0 and epochs.get(2) == 0
    assert not bits.test(1) and bits.test(0) and bits.test(2)


def test_write_from_a_slice_of_a_larger_buffer(kern):
    lun, primary, mir, _e, _b = make(kern)
    buf = bytearray(b"x" * 100 + b"y" * 512 + b"z" * 100)
    assert lun.write(0, 512, memoryview(buf)[100:612], 1)
    assert bytes(primary[:512]) == b"y" * 512 == bytes(mir[:512])


def test_large_write_without_the_gil_and_no_mirror(kern):
    lun, primary, mir, epochs, _b = make(kern, mirror=False, size=1 << 20)
    data = b"\xab" * (256 << 10)
    assert lun.write(1 << 18, len(data), data, 3)
    assert bytes(primary[1 << 18:(1 << 18) + len(data)]) == data
    assert mir is None
    assert epochs.extents_since(3) == [(1 << 18, 256 << 10)]


@pytest.mark.parametrize("offset, length, data", [
    (0, 0, b""),                    # empty
    (SIZE - 512, 1024, bytes(1024)),  # past the end
    (100, 512, bytes(512)),         # unaligned offset
    (0, 100, bytes(100)),           # unaligned length
    (0, 512, bytes(511)),           # payload of the wrong length
    (0, 512, None),                 # no payload
    (-512, 512, bytes(512)),        # negative offset
    (1 << 64, 512, bytes(512)),     # offset not addressable
])
def test_write_it_cannot_serve_changes_nothing(kern, offset, length, data):
    lun, primary, mir, epochs, _b = make(kern)
    assert lun.write(offset, length, data, 1) is False
    assert not any(primary) and not any(mir) and epochs.extents_since(1) == []


def test_epoch_out_of_range_is_refused(kern):
    lun, primary, _m, _e, _b = make(kern)
    assert lun.write(0, 512, b"a" * 512, 1 << 32) is False
    assert lun.write(0, 512, b"a" * 512, -1) is False
    assert not any(primary)


def test_read(kern):
    lun, primary, _m, _e, _b = make(kern)
    primary[1024:1536] = b"q" * 512
    got = lun.read(1024, 512)
    assert type(got) is bytes and got == b"q" * 512
    for offset, length in ((0, 0), (1, 512), (SIZE, 512), (-512, 512), (SIZE - 512, 1024)):
        assert lun.read(offset, length) is None


def test_buffers_are_not_kept_exported(kern):
    """A device closes by releasing its view: nothing the kernel did may keep it exported."""
    mod, em = kern
    backing = bytearray(SIZE)
    view = memoryview(backing)
    lun = mod.MemoryLun(view, None, em.EpochMap(SIZE, CS), None, SIZE, BS)
    lun.write(0, 512, b"a" * 512, 1)
    lun.read(0, 512)
    view.release()
    backing.extend(b"x")     # a bytearray with exports cannot resize: none are left
    with pytest.raises(ValueError):   # a closed device's view: an error, never a write into freed memory
        lun.write(0, 512, b"b" * 512, 1)


def test_buffers_too_small_or_bad_block_size(kern):
    mod, em = kern
    epochs = em.EpochMap(SIZE, CS)
    with pytest.raises(ValueError):
        mod.MemoryLun(bytearray(SIZE - 1), None, epochs, None, SIZE, BS)
    with pytest.raises(ValueError):
        mod.MemoryLun(bytearray(SIZE), bytearray(10), epochs, None, SIZE, BS)
    with pytest.raises(ValueError):
        mod.MemoryLun(bytearray(SIZE), None, epochs, None, SIZE, 500)


ops = st.lists(st.tuples(st.integers(-2, SIZE // BS + 2), st.integers(0, 20), st.integers(0, 5),
                         st.integers(0, 255)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(ops)
def test_both_implementations_agree_with_a_model(steps):
    impls = [(m, pyx.twin("epochmap") if m.__name__.endswith("_py") else pyx.compiled("epochmap"))
             for m in pyx.available("memlun")]
    model = bytearray(SIZE)
    model_epochs = {}
    states = [make(k, zeros=True) for k in impls]
    for block, nblocks, epoch, byte in steps:
        offset, length = block * BS, nblocks * BS
        data = bytes([byte]) * length
        ok = length > 0 and 0 <= offset and offset + length <= SIZE
        if ok:
            model[offset:offset + length] = data
            for c in range(offset // CS, (offset + length - 1) // CS + 1):
                model_epochs[c] = epoch
        for lun, primary, mir, epochs, bits in states:
            assert lun.write(offset, length, data, epoch) is ok
            assert lun.read(offset, length) == (data if ok else None)
    for lun, primary, mir, epochs, bits in states:
        assert bytes(primary) == bytes(model) == bytes(mir)
        assert [epochs.get(c) for c in range(SIZE // CS)] == [model_epochs.get(c, 0) for c in range(SIZE // CS)]
        assert [bits.test(c) for c in range(SIZE // CS)] == [c not in model_epochs for c in range(SIZE // CS)]


# ---------------------------------------------------------------- in the controller

CSIZE = 1 << 20


def controller(member_url=None, lun_url=None, pool=3):
    from splitpoint import config as cfgmod
    from splitpoint.firmware.controller import Controller
    member_url = member_url or f"ram://?size={CSIZE}"
    members = ", ".join(f'"{member_url}"' for _ in range(pool))
    return Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
[[lun]]
name = "lun0"
url = "{lun_url or f'ram://?size={CSIZE}'}"
[lun.pool]
members = [{members}]
"""))


def test_a_lun_of_ram_devices_takes_the_memory_path():
    ctl = controller()
    try:
        lun = ctl.luns["lun0"]
        assert lun.memory_path() is not None
        assert lun.memory_path() is lun.memory_path()   # built once while nothing changes
        ctl.write("lun0", 8192, b"w" * 4096)
        assert ctl.read("lun0", 8192, 4096) == b"w" * 4096
        assert lun.pools[0].active.device.read(8192, 4096) == b"w" * 4096
        assert lun.epochs.get(2) == lun.epoch
        assert ctl.counters["writes"] == 1 and ctl.counters["bytes_written"] == 4096
        assert ctl.counters["reads"] == 1 and ctl.counters["bytes_read"] == 4096
    finally:
        ctl.close()


@pytest.mark.parametrize("where", ["member", "primary"])
def test_a_filter_keeps_every_op_on_the_general_path(where):
    url = f"ram://?size={CSIZE}&faults=delay=0ms"
    ctl = controller(member_url=url) if where == "member" else controller(lun_url=url)
    try:
        assert ctl.luns["lun0"].memory_path() is None
        ctl.write("lun0", 0, b"f" * 512)
        assert ctl.read("lun0", 0, 512) == b"f" * 512
        assert ctl.luns["lun0"].pools[0].active.device.read(0, 512) == b"f" * 512
    finally:
        ctl.close()


def test_a_trigger_inside_one_batch_rotates_the_memory_path():
    """WRITE a, TRIGGER, WRITE b drained in one batch: the backup holds a only, the new active member b."""
    from splitpoint.firmware.requests import Op
    ctl = controller()
    try:
        done = []
        ctl.submit("lun0", Op.WRITE, 0, 512, b"a" * 512, callback=done.append)
        ctl.submit("lun0", Op.TRIGGER, callback=done.append)
        ctl.submit("lun0", Op.WRITE, 0, 512, b"b" * 512, callback=done.append)
        assert ctl.poll() == 3
        assert [c.error for c in done] == [None] * 3
        assert [c.seq for c in done] == sorted(c.seq for c in done)
        ctl.settle()
        assert ctl.read_backup("lun0", 1, 0, 512) == b"a" * 512
        assert ctl.read("lun0", 0, 512) == b"b" * 512
        lun = ctl.luns["lun0"]
        assert lun.pools[0].active.device.read(0, 512) == b"b" * 512
        assert lun.epochs.get(0) == 2
    finally:
        ctl.close()


def test_requests_the_kernel_cannot_serve_get_the_general_paths_errors():
    from splitpoint.firmware import errors as E
    from splitpoint.firmware.requests import Op
    ctl = controller()
    try:
        done = []
        ctl.submit("lun0", Op.WRITE, CSIZE - 512, 1024, bytes(1024), callback=done.append)
        ctl.submit("lun0", Op.WRITE, 100, 512, bytes(512), callback=done.append)
        ctl.submit("lun0", Op.READ, 0, 0, callback=done.append)
        ctl.submit("lun0", Op.WRITE, 0, 512, bytes(100), callback=done.append)
        ctl.poll()
        assert [type(c.error) for c in done] == [E.OutOfRangeError, E.MisalignedError, E.ZeroLengthError,
                                                E.BadRequestError]
        assert ctl.counters["errors"] == 4 and ctl.counters["writes"] == 0
    finally:
        ctl.close()


@pytest.mark.parametrize("member_url", [None, f"ram://?size={CSIZE}&faults=delay=0ms"])
def test_tagged_callbacks_on_the_memory_and_the_general_path(member_url):
    """``callback=(fn, a, b)`` gets fn(a, b, error, data) whichever path executes the request."""
    from splitpoint.firmware import errors as E
    from splitpoint.firmware.requests import Op
    ctl = controller(member_url=member_url)
    try:
        got = []

        def fn(a, b, error, data):
            got.append((a, b, type(error), data))

        ctl.submit("lun0", Op.WRITE, 0, 512, b"t" * 512, callback=(fn, 1, 0))
        ctl.submit("lun0", Op.READ, 0, 512, callback=(fn, 2, 0))
        ctl.submit("lun0", Op.READ, CSIZE, 512, callback=(fn, 3, CSIZE))
        ctl.submit("lun0", Op.WRITE, 0, 512, b"u" * 512, flags=1 << 8, callback=(fn, 4, 0))   # FUA
        ctl.poll()
        assert got == [(1, 0, type(None), None), (2, 0, type(None), b"t" * 512),
                       (3, CSIZE, E.OutOfRangeError, None), (4, 0, type(None), None)]
    finally:
        ctl.close()


def test_a_member_on_a_device_queue_gets_every_write_through_its_queue():
    """A DeviceQueue over a RAM disk answers writable_buffer from its device, but has no buffer():
    the LUN stays on the general path and the member's queue sees every op."""
    from splitpoint.firmware.devio import DeviceQueue
    from splitpoint.hal.ram import RamDevice
    ctl = controller()
    try:
        lun = ctl.luns["lun0"]
        member = lun.pools[0].active
        ram = RamDevice(CSIZE, 512)
        dq = DeviceQueue(ram, "member")
        assert dq.writable_buffer is True and dq.buffer() is None
        member.device = dq
        assert lun.memory_path() is None
        ctl.write("lun0", 0, b"q" * 512)
        dq.flush_and_wait()
        assert ram.read(0, 512) == b"q" * 512   # only the queue's worker writes to this RAM disk
        dq.close()
    finally:
        ctl.close()


@pytest.mark.parametrize("which", ["primary", "member"])
def test_a_closed_device_gets_the_general_paths_answer(which):
    """A device closed under the LUN: the request fails (primary) or the member is demoted, as before."""
    from splitpoint.firmware import errors as E
    from splitpoint.firmware.requests import Op
    ctl = controller()
    try:
        lun = ctl.luns["lun0"]
        assert lun.memory_path() is not None
        member = lun.pools[0].active
        (lun.device if which == "primary" else member.device).close()
        done = []
        ctl.submit("lun0", Op.WRITE, 0, 512, b"c" * 512, callback=done.append)
        ctl.poll()
        if which == "primary":
            assert isinstance(done[0].error, E.DeviceIOError)
        else:
            assert done[0].error is None and member.state == "inconsistent"
    finally:
        ctl.close()
