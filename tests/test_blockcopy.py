"""Block copy, compare and digest (``splitpoint.pyx.select("blockcopy")``) against slicing and xxhash."""
from __future__ import annotations

import errno
import mmap
import os
import random

import numpy as np
import pytest
import xxhash
from conftest import kernel_params
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx


@pytest.fixture(scope="module", params=kernel_params("blockcopy"))
def bc(request):
    return request.param


@pytest.fixture(scope="module", params=kernel_params("epochmap"))
def em(request):
    return request.param


def pattern(n, seed=1):
    return bytearray(random.Random(seed).randbytes(n))


# ---------------------------------------------------------------- copy_extents


def test_copy_extents_copies_only_the_extents(bc):
    src, dst = pattern(1000), bytearray(1000)
    assert bc.copy_extents(src, dst, [(10, 5), (500, 100)]) == 105
    want = bytearray(1000)
    want[10:15], want[500:600] = src[10:15], src[500:600]
    assert dst == want


def test_copy_extents_merges_adjacent_and_overlapping(bc):
    src, dst = pattern(100), bytearray(100)
    # (0,10)+(10,10) adjacent, (15,10) overlapping, (50,5) twice, unsorted, zero-length dropped
    assert bc.copy_extents(src, dst, [(50, 5), (10, 10), (0, 10), (15, 10), (50, 5), (90, 0)]) == 30
    assert dst[:25] == src[:25] and dst[50:55] == src[50:55]
    assert dst[25:50] == bytes(25) and dst[55:] == bytes(45)


def test_copy_extents_numpy_extent_array(bc):
    src, dst = pattern(1 << 16), bytearray(1 << 16)
    ext = np.array([[4096, 4096], [0, 4096], [12288, 100]], dtype=np.uint64)
    assert bc.copy_extents(src, dst, ext) == 8292
    assert dst[:8192] == src[:8192] and dst[12288:12388] == src[12288:12388] and dst[8192:12288] == bytes(4096)
    assert bc.copy_extents(src, dst, np.zeros((0, 2), dtype=np.uint64)) == 0
    assert bc.copy_extents(src, dst, np.array([[0, 8]], dtype=np.int32)) == 8


@pytest.mark.parametrize("ext", [np.zeros((3,), np.uint64), np.zeros((2, 3), np.uint64), np.zeros((2, 2), np.float64)])
def test_copy_extents_bad_array_shape(bc, ext):
    with pytest.raises(bc.ExtentShapeError, match=r"\(n, 2\)"):
        bc.copy_extents(bytes(10), bytearray(10), ext)


def test_copy_extents_bad_pairs(bc):
    with pytest.raises(bc.ExtentShapeError, match="pair"):
        bc.copy_extents(bytes(10), bytearray(10), [(1, 2, 3)])
    with pytest.raises(bc.ExtentShapeError):
        bc.copy_extents(bytes(10), bytearray(10), [5])
    with pytest.raises(TypeError):
        bc.copy_extents(bytes(10), bytearray(10), [(1.0, 2)])


@pytest.mark.parametrize("ext", [[(0, 11)], [(11, 0)], [(-1, 2)], [(2, -1)], [(5, 6)], [(1 << 63, 1 << 63)],
                                 [(0, (1 << 64) - 1)]])
def test_copy_extents_bounds_checked_before_any_copy(bc, ext):
    src, dst = pattern(10), bytearray(10)
    with pytest.raises(bc.ExtentOutOfRangeError):
        bc.copy_extents(src, dst, [(0, 5)] + ext)
    assert dst == bytes(10)   # the good first extent was not copied either


def test_copy_extents_checks_both_buffers(bc):
    with pytest.raises(bc.ExtentOutOfRangeError, match="of 8 bytes"):
        bc.copy_extents(bytes(16), bytearray(8), [(4, 8)])
    with pytest.raises(bc.ExtentOutOfRangeError, match="of 8 bytes"):
        bc.copy_extents(bytes(8), bytearray(16), [(4, 8)])


def test_copy_extents_rejects_read_only_destination(bc):
    with pytest.raises(bc.ReadOnlyBufferError, match="read-only"):
        bc.copy_extents(bytes(8), bytes(8), [(0, 1)])
    with pytest.raises(bc.ReadOnlyBufferError):
        bc.copy_extents(bytes(8), memoryview(bytearray(8)).toreadonly(), [(0, 1)])


def test_non_contiguous_buffers_rejected(bc):
    arr = np.zeros((4, 4), dtype=np.uint8)[:, ::2]
    with pytest.raises(bc.NonContiguousBufferError, match="contiguous"):
        bc.copy_extents(arr, bytearray(8), [(0, 1)])
    with pytest.raises(bc.NonContiguousBufferError):
        bc.digest(arr)


def test_buffers_of_any_item_type(bc):
    src = np.arange(1024, dtype=np.uint32)
    dst = np.zeros((32, 32), dtype=np.uint32)
    assert bc.copy_extents(src, dst, [(0, 4096)]) == 4096
    assert (dst.ravel() == src).all()
    ram = mmap.mmap(-1, 8192)
    assert bc.copy_extents(src, memoryview(ram), [(100, 3000)]) == 3000
    assert ram[100:3100] == src.tobytes()[100:3100]
    assert bc.digest(src) == xxhash.xxh3_64_intdigest(src.tobytes())


def test_copy_chunks_from_bitmap_and_list(bc, em):
    size, cs = 10 * 4096 + 10, 4096
    src = pattern(size)
    bm = em.ChunkBitmap(size, cs)
    bm.set_range(4096, 2)
    bm.set_range(2 * 4096, 1)
    bm.set_range(size - 1, 1)
    dst = bytearray(size)
    assert bc.copy_chunks(src, dst, bm, cs) == 2 * 4096 + 10
    assert dst[4096:3 * 4096] == src[4096:3 * 4096] and dst[-10:] == src[-10:]
    assert dst[:4096] == bytes(4096) and dst[3 * 4096:-10] == bytes(7 * 4096)
    dst2 = bytearray(size)
    assert bc.copy_chunks(src, dst2, [10, 1, 2], cs) == 2 * 4096 + 10
    assert dst2 == dst
    with pytest.raises(bc.ExtentOutOfRangeError):
        bc.copy_chunks(src, dst2, [11], cs)
    with pytest.raises(bc.ExtentShapeError, match="chunk size"):
        bc.copy_chunks(src, dst2, bm, 8192)


# ---------------------------------------------------------------- compare / digest


def test_compare_extents_reports_extents_as_given(bc):
    a = pattern(4096)
    b = bytearray(a)
    b[100] ^= 1
    b[4095] ^= 0xFF
    ext = [(0, 50), (64, 64), (50, 100), (4000, 96), (4095, 0)]
    assert bc.compare_extents(a, b, ext) == [(64, 64), (50, 100), (4000, 96)]
    assert bc.compare_extents(a, a, ext) == []
    assert bc.compare_extents(a, b, np.array(ext, dtype=np.uint64)) == [(64, 64), (50, 100), (4000, 96)]
    with pytest.raises(bc.ExtentOutOfRangeError):
        bc.compare_extents(a, b[:100], [(50, 100)])


def test_digest_matches_xxhash(bc):
    buf = pattern(100_000)
    assert bc.digest(buf) == xxhash.xxh3_64_intdigest(bytes(buf))
    assert bc.digest(buf, 1000) == xxhash.xxh3_64_intdigest(bytes(buf[1000:]))
    assert bc.digest(buf, 7, 300) == xxhash.xxh3_64_intdigest(bytes(buf[7:307]))
    assert bc.digest(buf, 100_000, 0) == bc.digest(b"") == xxhash.xxh3_64_intdigest(b"")
    for off, ln in ((-1, 1), (0, 100_001), (100_001, None), (5, -1)):
        with pytest.raises(bc.ExtentOutOfRangeError):
            bc.digest(buf, off, ln)


def test_digest_regions(bc):
    buf = pattern(10_000)
    assert bc.digest_regions(buf, 4096) == [xxhash.xxh3_64_intdigest(bytes(buf[o:o + 4096]))
                                            for o in (0, 4096, 8192)]
    assert bc.digest_regions(buf, 10_000) == [xxhash.xxh3_64_intdigest(bytes(buf))]
    assert bc.digest_regions(b"", 4096) == []
    for bad in (0, -4096):
        with pytest.raises(bc.ExtentError, match="region_size"):
            bc.digest_regions(buf, bad)


# ---------------------------------------------------------------- properties


@st.composite
def buffers_and_extents(draw):
    n = draw(st.integers(0, 2000))
    seed = draw(st.integers(0, 1 << 30))
    ext = []
    for _ in range(draw(st.integers(0, 12))):
        off = draw(st.integers(0, n))
        ext.append((off, draw(st.integers(0, n - off))))
    return n, seed, ext


@settings(max_examples=200, deadline=None)
@given(buffers_and_extents(), st.booleans())
def test_copy_matches_slicing(bc, case, as_array):
    n, seed, ext = case
    src, dst = pattern(n, seed), pattern(n, seed + 1)
    want = bytearray(dst)
    for off, ln in ext:
        want[off:off + ln] = src[off:off + ln]
    union = set()
    for off, ln in ext:
        union |= set(range(off, off + ln))
    arg = np.array(ext, dtype=np.uint64).reshape(-1, 2) if as_array else ext
    assert bc.copy_extents(src, dst, arg) == len(union)
    assert dst == want


@settings(max_examples=200, deadline=None)
@given(buffers_and_extents(), st.lists(st.integers(0, 1999), max_size=5))
def test_compare_matches_bytes_equality(bc, case, flips):
    n, seed, ext = case
    a = pattern(n, seed)
    b = bytearray(a)
    for f in flips:
        if f < n:
            b[f] ^= 0x5A
    assert bc.compare_extents(a, b, ext) == [(o, ln) for o, ln in ext if a[o:o + ln] != b[o:o + ln]]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.data())
def test_digest_matches_xxhash_on_random_ranges(bc, data, draw):
    off = draw.draw(st.integers(0, len(data)))
    ln = draw.draw(st.integers(0, len(data) - off))
    region = draw.draw(st.integers(1, 1000))
    assert bc.digest(data, off, ln) == xxhash.xxh3_64_intdigest(data[off:off + ln])
    assert bc.digest_regions(data, region) == [xxhash.xxh3_64_intdigest(data[o:o + region])
                                               for o in range(0, len(data), region)]


@settings(max_examples=100, deadline=None)
@given(buffers_and_extents())
def test_implementations_agree(case):
    n, seed, ext = case
    results = []
    for mod in pyx.available("blockcopy"):
        src, dst = pattern(n, seed), pattern(n, seed + 1)
        copied = mod.copy_extents(src, dst, ext)
        results.append((copied, bytes(dst), mod.compare_extents(src, pattern(n, seed + 1), ext),
                        mod.digest(dst), mod.digest_regions(dst, 333)))
    assert all(r == results[0] for r in results)


def outcome(fn):
    """What a call did: ("ok", result) or (exception type name, message)."""
    try:
        return "ok", fn()
    except Exception as exc:   # noqa: BLE001  (any difference between the implementations is the finding)
        return type(exc).__name__, str(exc)


wild = st.one_of(st.integers(-3, 40), st.sampled_from([-(1 << 63), 1 << 63, (1 << 64) - 1, 1 << 64, 1 << 80]),
                 st.sampled_from([None, 1.0, "3", True]))
wild_extents = st.one_of(
    st.lists(st.one_of(st.tuples(wild, wild), st.lists(wild, max_size=3), wild), max_size=4),
    st.lists(st.tuples(st.integers(-5, 40), st.integers(-5, 40)), max_size=4).map(
        lambda rows: np.array(rows, dtype=np.int64).reshape(-1, 2)),
    st.sampled_from([np.zeros((2, 3), np.uint64), np.zeros(4, np.uint64), np.ones((1, 2), np.float32),
                     np.array([[1 << 63, 1 << 63]], dtype=np.uint64)]),
)
wild_buffers = st.sampled_from(["bytearray", "bytes", "numpy", "strided", "readonly"])


def make_buffer(kind, n=32, seed=5):
    data = pattern(n, seed)
    return {"bytearray": lambda: data, "bytes": lambda: bytes(data),
            "numpy": lambda: np.frombuffer(data, dtype=np.uint8).copy().reshape(4, n // 4),
            "strided": lambda: np.frombuffer(data * 2, dtype=np.uint8)[::2].copy()[::1].reshape(2, n // 2)[:, ::2],
            "readonly": lambda: memoryview(data).toreadonly()}[kind]()


@settings(max_examples=300, deadline=None)
@given(wild_extents, wild_buffers, wild_buffers, wild, wild)
def test_implementations_agree_on_bad_arguments(extents, src_kind, dst_kind, a, b):
    """Odd buffers, extents and offsets do the same thing (result or exception type and message) in both."""
    results = []
    for mod in pyx.available("blockcopy"):
        src, dst = make_buffer(src_kind), make_buffer(dst_kind, seed=6)
        results.append([
            outcome(lambda: mod.copy_extents(src, dst, extents)), bytes(memoryview(dst).tobytes()),
            outcome(lambda: mod.compare_extents(src, dst, extents)),
            outcome(lambda: mod.digest(src, a, b)), outcome(lambda: mod.digest(dst, a)),
            outcome(lambda: mod.digest_regions(src, a)),
        ])
    assert results[1:] == results[:1] * (len(results) - 1)


# ---------------------------------------------------------------- selection


def test_compiled_module_is_selected_when_built():
    mod = pyx.compiled("blockcopy")
    if pyx.extensions_disabled():
        assert pyx.select("blockcopy").__name__ == "splitpoint.pyx.blockcopy_py"
    elif mod is None:
        pytest.skip("blockcopy extension not built")
    else:
        assert pyx.select("blockcopy") is mod
        assert mod.__file__.endswith((".so", ".pyd"))


# ---------------------------------------------------------------- copy_file_extents


def _image(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return os.open(path, os.O_RDWR)


@pytest.mark.parametrize("dst_dir", ["tmp", "shm"])
def test_copy_file_extents_copies_only_the_extents(bc, tmp_path, dst_dir):
    """Same file system (copy_file_range) and tmpfs to disk (EXDEV: the pread/pwrite fallback) give the same bytes."""
    src_data, dst_data = bytes(pattern(1 << 20, 3)), bytes(pattern(1 << 20, 4))
    src = _image(tmp_path / "src.img", src_data)
    if dst_dir == "shm" and os.path.isdir("/dev/shm"):
        dpath = f"/dev/shm/sp-copy-{os.getpid()}-{bc.__name__}.img"
    else:
        dpath = str(tmp_path / "dst.img")
    dst = _image(dpath, dst_data)
    try:
        extents = [(4096, 8192), (0, 4096), (65536, 300000), (70000, 10)]   # overlapping/adjacent: merged
        assert bc.copy_file_extents(src, dst, extents, 1 << 20, 1 << 20) == 4096 + 8192 + 300000
        want = bytearray(dst_data)
        for offset, length in extents:
            want[offset:offset + length] = src_data[offset:offset + length]
        assert os.pread(dst, 1 << 20, 0) == bytes(want)
    finally:
        os.close(src)
        os.close(dst)
        if dpath.startswith("/dev/shm"):
            os.unlink(dpath)


def test_copy_file_extents_writes_zeros_past_a_short_source(bc, tmp_path):
    src = _image(tmp_path / "src.img", b"\x11" * 5000)      # shrunk behind our back: the rest reads as zeros
    dst = _image(tmp_path / "dst.img", b"\xee" * 16384)
    try:
        assert bc.copy_file_extents(src, dst, [(0, 16384)], 16384, 16384) == 16384
        assert os.pread(dst, 16384, 0) == b"\x11" * 5000 + bytes(16384 - 5000)
    finally:
        os.close(src)
        os.close(dst)


def test_copy_file_extents_checks_every_extent_before_moving_a_byte(bc, tmp_path):
    src = _image(tmp_path / "src.img", b"\x11" * 8192)
    dst = _image(tmp_path / "dst.img", b"\xee" * 8192)
    try:
        with pytest.raises(pyx.twin("blockcopy").ExtentOutOfRangeError):
            bc.copy_file_extents(src, dst, [(0, 4096), (4096, 8192)], 8192, 8192)
        with pytest.raises(pyx.twin("blockcopy").ExtentOutOfRangeError):
            bc.copy_file_extents(src, dst, [(0, 4096)], 8192, 2048)     # the destination is the smaller
        assert os.pread(dst, 8192, 0) == b"\xee" * 8192
    finally:
        os.close(src)
        os.close(dst)


def test_copy_file_extents_reports_the_errno(bc, tmp_path):
    src = _image(tmp_path / "src.img", b"\x11" * 8192)
    ro = os.open(tmp_path / "src.img", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as info:
            bc.copy_file_extents(src, ro, [(0, 4096)], 8192, 8192)   # destination not open for writing
        assert info.value.errno == errno.EBADF
    finally:
        os.close(src)
        os.close(ro)
