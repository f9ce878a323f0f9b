"""Dirty tracking (``splitpoint.pyx.select("epochmap")``): both implementations against plain models."""
from __future__ import annotations

import pytest
from conftest import kernel_params
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx

CS = 4096


@pytest.fixture(scope="module", params=kernel_params("epochmap"))
def em(request):
    return request.param


# ---------------------------------------------------------------- plain models


class ListEpochMap:
    """Reference: a Python list with one int per chunk."""

    def __init__(self, size, chunk_size):
        self.size, self.cs = size, chunk_size
        self.v = [0] * (-(-size // chunk_size))

    def mark(self, offset, length, epoch):
        if length:
            for c in range(offset // self.cs, (offset + length - 1) // self.cs + 1):
                self.v[c] = epoch

    def extents_since(self, epoch, start=0, limit=None):
        end = len(self.v) if limit is None else min(limit, len(self.v))
        return model_runs([start <= c < end and e >= epoch for c, e in enumerate(self.v)], self.cs, self.size)


def model_runs(flags, cs, size):
    out = []
    for c, on in enumerate(flags):
        if not on:
            continue
        off, ln = c * cs, min(cs, size - c * cs)
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + ln)
        else:
            out.append((off, ln))
    return out


# ---------------------------------------------------------------- EpochMap units


def test_geometry_and_partial_last_chunk(em):
    m = em.EpochMap(10 * CS + 100, CS)
    assert (m.size, m.chunk_size, m.nchunks, len(m)) == (10 * CS + 100, CS, 11, 11)
    m.mark(10 * CS + 50, 50, 3)
    assert m.extents_since(1) == [(10 * CS, 100)]
    m.set_all(2)
    assert m.extents_since(2) == [(0, 10 * CS + 100)]
    assert m.count_since(2) == 11


@pytest.mark.parametrize("chunk_size", [0, -4096, 3, 4095, 4097, 6144])
def test_chunk_size_must_be_power_of_two(em, chunk_size):
    with pytest.raises(em.ChunkSizeError, match="power of two"):
        em.EpochMap(1 << 20, chunk_size)
    with pytest.raises(em.ChunkSizeError):
        em.ChunkBitmap(1 << 20, chunk_size)


@pytest.mark.parametrize("size", [0, -1, 1 << 64])
def test_size_must_be_positive(em, size):
    with pytest.raises(em.MapSizeError, match="size"):
        em.EpochMap(size, CS)
    with pytest.raises(em.MapSizeError):
        em.ChunkBitmap(size, CS)


def test_one_chunk_map_smaller_than_a_chunk(em):
    m = em.EpochMap(1, 1 << 16)
    m.mark(0, 1, 9)
    assert (m.nchunks, m.get(0), m.extents_since(9)) == (1, 9, [(0, 1)])


def test_mark_spanning_chunk_boundaries(em):
    m = em.EpochMap(16 * CS, CS)
    m.mark(CS - 1, 2, 5)            # last byte of chunk 0, first of chunk 1
    m.mark(4 * CS + 1, 3 * CS, 6)   # chunks 4..7
    assert [m.get(c) for c in range(9)] == [5, 5, 0, 0, 6, 6, 6, 6, 0]
    assert m.extents_since(5) == [(0, 2 * CS), (4 * CS, 4 * CS)]
    assert m.extents_since(6) == [(4 * CS, 4 * CS)]
    assert m.extents_since(7) == []
    assert (m.count_since(5), m.count_since(6), m.count_since(0)) == (6, 4, 16)


def test_mark_overwrites_with_lower_epoch(em):
    m = em.EpochMap(8 * CS, CS)
    m.mark(0, 8 * CS, 9)
    m.mark(CS, CS, 2)
    assert m.get(1) == 2
    assert m.extents_since(9) == [(0, CS), (2 * CS, 6 * CS)]


def test_zero_length_mark_is_a_checked_noop(em):
    m = em.EpochMap(4 * CS, CS)
    m.mark(CS, 0, 7)
    m.mark(4 * CS, 0, 7)   # at the very end: allowed, touches nothing
    assert m.count_since(1) == 0
    with pytest.raises(em.OutOfRangeError):
        m.mark(4 * CS + 1, 0, 7)


def test_extents_window_start_limit(em):
    m = em.EpochMap(32 * CS, CS)
    m.mark(2 * CS, 10 * CS, 4)   # chunks 2..11
    assert m.extents_since(1, 0, 5) == [(2 * CS, 3 * CS)]
    assert m.extents_since(1, 5, 8) == [(5 * CS, 3 * CS)]
    assert m.extents_since(1, 5) == [(5 * CS, 7 * CS)]
    assert m.extents_since(1, 12, 32) == []
    assert m.extents_since(1, 32) == []
    assert m.extents_since(1, 0, 1000) == [(2 * CS, 10 * CS)]  # a limit past the end is clipped
    assert m.extents_since(1, 3, 3) == []


def test_extents_since_zero_is_everything(em):
    m = em.EpochMap(5 * CS + 1, CS)
    assert m.extents_since(0) == [(0, 5 * CS + 1)]


@pytest.mark.parametrize("call", [
    lambda m: m.mark(-1, 10, 1),
    lambda m: m.mark(0, -1, 1),
    lambda m: m.mark(8 * CS - 1, 2, 1),
    lambda m: m.mark(1 << 64, 1, 1),
    lambda m: m.get(8),
    lambda m: m.get(-1),
    lambda m: m.extents_since(1, 9),
    lambda m: m.extents_since(1, -1),
    lambda m: m.extents_since(1, 5, 4),
])
def test_out_of_range(em, call):
    m = em.EpochMap(8 * CS, CS)
    with pytest.raises(em.OutOfRangeError):
        call(m)


def test_out_of_range_is_a_value_and_index_error(em):
    m = em.EpochMap(8 * CS, CS)
    with pytest.raises(ValueError, match="past the map size"):
        m.mark(7 * CS, 2 * CS, 1)
    with pytest.raises(IndexError, match="chunk 8"):
        m.get(8)


@pytest.mark.parametrize("epoch", [-1, 1 << 32, 1 << 70])
def test_epoch_must_be_uint32(em, epoch):
    m = em.EpochMap(8 * CS, CS)
    for call in (lambda: m.mark(0, 1, epoch), lambda: m.extents_since(epoch),
                 lambda: m.count_since(epoch), lambda: m.set_all(epoch)):
        with pytest.raises(em.EpochRangeError, match="uint32"):
            call()


def test_max_epoch(em):
    m = em.EpochMap(8 * CS, CS)
    m.mark(0, 1, em.EPOCH_MAX)
    assert m.get(0) == 0xFFFF_FFFF
    assert m.extents_since(0xFFFF_FFFF) == [(0, CS)]


def test_non_integers_rejected(em):
    m = em.EpochMap(8 * CS, CS)
    with pytest.raises(TypeError):
        m.mark(1.5, 1, 1)
    with pytest.raises(TypeError):
        em.EpochMap(8.0 * CS, CS)


def test_clear_and_set_all(em):
    m = em.EpochMap(8 * CS, CS)
    m.mark(0, 8 * CS, 3)
    m.clear()
    assert m.count_since(1) == 0 and m.extents_since(1) == []
    m.set_all(7)
    assert m.count_since(7) == 8 and m.count_since(8) == 0


def test_bytes_round_trip_little_endian(em):
    m = em.EpochMap(3 * CS + 5, CS)
    m.mark(0, 1, 0x01020304)
    m.mark(3 * CS, 5, 7)
    data = m.to_bytes()
    assert data == bytes([4, 3, 2, 1]) + bytes(8) + bytes([7, 0, 0, 0])
    back = em.EpochMap.from_bytes(3 * CS + 5, CS, data)
    assert isinstance(back, em.EpochMap)
    assert [back.get(c) for c in range(4)] == [0x01020304, 0, 0, 7]
    assert back.extents_since(7) == [(0, CS), (3 * CS, 5)]
    assert em.EpochMap.from_bytes(3 * CS + 5, CS, bytearray(data)).to_bytes() == data


def test_from_bytes_wrong_length(em):
    with pytest.raises(em.SerialisedMapError, match="needs 16 bytes, got 12"):
        em.EpochMap.from_bytes(4 * CS, CS, bytes(12))


def test_large_map_long_runs(em):
    """Runs longer than any internal block, and dirty blocks after long clean ones."""
    m = em.EpochMap(1 << 30, CS)   # 262144 chunks
    m.mark(5 * CS, 20000 * CS, 2)
    m.mark(200000 * CS, CS, 3)
    m.mark((1 << 30) - 1, 1, 3)
    assert m.extents_since(2) == [(5 * CS, 20000 * CS), (200000 * CS, CS), ((1 << 30) - CS, CS)]
    assert m.extents_since(3) == [(200000 * CS, CS), ((1 << 30) - CS, CS)]
    assert m.count_since(2) == 20002
    m.mark(5 * CS, 20000 * CS, 1)   # lowered: the map must not keep reporting them
    assert m.extents_since(2) == [(200000 * CS, CS), ((1 << 30) - CS, CS)]
    back = em.EpochMap.from_bytes(1 << 30, CS, m.to_bytes())   # summaries rebuilt from the loaded epochs
    assert back.extents_since(3) == m.extents_since(3) and back.extents_since(1) == m.extents_since(1)
    assert back.count_since(1) == 20002


# ---------------------------------------------------------------- ChunkBitmap units


def test_bitmap_basics(em):
    b = em.ChunkBitmap(100 * CS + 1, CS)
    assert b.nchunks == 101 and b.count() == 0 and b.next_set(0) == -1
    b.set_range(CS - 1, 2)
    b.set_range(70 * CS, 1)
    b.set_range(100 * CS, 1)
    assert [c for c in range(101) if b.test(c)] == [0, 1, 70, 100]
    assert b.extents() == [(0, 2 * CS), (70 * CS, CS), (100 * CS, 1)]
    assert (b.next_set(0), b.next_set(2), b.next_set(71), b.next_set(101)) == (0, 70, 100, -1)
    b.clear_chunk(70)
    assert b.next_set(2) == 100
    b.clear_range(0, CS + 1)
    assert b.count() == 1
    b.set_all()
    assert b.count() == 101 and b.extents() == [(0, 100 * CS + 1)]
    assert b.extents(64, 66) == [(64 * CS, 2 * CS)]
    b.clear()
    assert b.count() == 0


def test_bitmap_zero_length_and_bounds(em):
    b = em.ChunkBitmap(8 * CS, CS)
    b.set_range(3 * CS, 0)
    b.clear_range(8 * CS, 0)
    assert b.count() == 0
    for call in (lambda: b.set_range(8 * CS, 1), lambda: b.set_range(-1, 1), lambda: b.clear_range(0, 8 * CS + 1),
                 lambda: b.test(8), lambda: b.clear_chunk(-1), lambda: b.next_set(9), lambda: b.extents(3, 2)):
        with pytest.raises(em.OutOfRangeError):
            call()


def test_bitmap_bytes_round_trip(em):
    b = em.ChunkBitmap(70 * CS, CS)
    for c in (0, 9, 63, 64, 69):
        b.set_range(c * CS, 1)
    data = b.to_bytes()
    assert len(data) == 16
    assert int.from_bytes(data, "little") == sum(1 << c for c in (0, 9, 63, 64, 69))
    back = em.ChunkBitmap.from_bytes(70 * CS, CS, data)
    assert isinstance(back, em.ChunkBitmap) and back.to_bytes() == data
    with pytest.raises(em.SerialisedMapError, match="needs 16 bytes"):
        em.ChunkBitmap.from_bytes(70 * CS, CS, data[:8])
    with pytest.raises(em.SerialisedMapError, match="past chunk 69"):
        em.ChunkBitmap.from_bytes(70 * CS, CS, (1 << 70).to_bytes(16, "little"))


# ---------------------------------------------------------------- properties

sizes = st.tuples(st.integers(1, 300), st.sampled_from([1, 2, 8, 64, 512]), st.integers(0, 511))


@st.composite
def geometry(draw):
    """(size, chunk_size): at least one full chunk, often a partial last one."""
    nfull, cs, tail = draw(sizes)
    return nfull * cs + tail % cs, cs


@st.composite
def epoch_ops(draw):
    size, cs = draw(geometry())
    ops = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.sampled_from(["mark", "mark", "mark", "query", "set_all", "clear"]))
        if kind == "mark":
            off = draw(st.integers(0, size))
            ops.append(("mark", off, draw(st.integers(0, size - off)), draw(st.integers(0, 6))))
        elif kind == "query":
            n = -(-size // cs)
            start = draw(st.integers(0, n))
            limit = draw(st.one_of(st.none(), st.integers(start, n + 3)))
            ops.append(("query", draw(st.integers(0, 7)), start, limit))
        elif kind == "set_all":
            ops.append(("set_all", draw(st.integers(0, 6))))
        else:
            ops.append(("clear",))
    return size, cs, ops


def run_epoch_ops(mod, size, cs, ops):
    """Apply ``ops`` to mod.EpochMap and a list model; return everything the map reported."""
    m, ref, seen = mod.EpochMap(size, cs), ListEpochMap(size, cs), []
    for op in ops:
        if op[0] == "mark":
            m.mark(*op[1:])
            ref.mark(*op[1:])
        elif op[0] == "query":
            got = m.extents_since(*op[1:])
            assert got == ref.extents_since(*op[1:])
            seen.append(got)
        elif op[0] == "set_all":
            m.set_all(op[1])
            ref.v = [op[1]] * len(ref.v)
        else:
            m.clear()
            ref.v = [0] * len(ref.v)
    assert [m.get(c) for c in range(m.nchunks)] == ref.v
    for e in range(8):
        assert m.count_since(e) == sum(v >= e for v in ref.v)
    seen.append(m.to_bytes())
    assert mod.EpochMap.from_bytes(size, cs, seen[-1]).extents_since(1) == ref.extents_since(1)
    return seen


@settings(max_examples=150, deadline=None)
@given(epoch_ops())
def test_epochmap_matches_list_model(em, case):
    run_epoch_ops(em, *case)


@settings(max_examples=100, deadline=None)
@given(epoch_ops())
def test_epochmap_implementations_agree(case):
    results = [run_epoch_ops(mod, *case) for mod in pyx.available("epochmap")]
    assert results[1:] == results[:1] * (len(results) - 1)


@st.composite
def bitmap_ops(draw):
    size, cs = draw(geometry())
    n = -(-size // cs)
    ops = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["set", "set", "clear_range", "clear_chunk", "extents", "next", "set_all"]))
        if kind in ("set", "clear_range"):
            off = draw(st.integers(0, size))
            ops.append((kind, off, draw(st.integers(0, size - off))))
        elif kind == "clear_chunk":
            ops.append((kind, draw(st.integers(0, n - 1))))
        elif kind == "extents":
            start = draw(st.integers(0, n))
            ops.append((kind, start, draw(st.one_of(st.none(), st.integers(start, n + 2)))))
        elif kind == "next":
            ops.append((kind, draw(st.integers(0, n))))
        else:
            ops.append((kind,))
    return size, cs, ops


def run_bitmap_ops(mod, size, cs, ops):
    """Apply ``ops`` to mod.ChunkBitmap and a Python set; return everything the bitmap reported."""
    b, ref, seen = mod.ChunkBitmap(size, cs), set(), []
    n = -(-size // cs)
    touched = lambda off, ln: set(range(off // cs, (off + ln - 1) // cs + 1)) if ln else set()  # noqa: E731
    for op in ops:
        if op[0] == "set":
            b.set_range(*op[1:])
            ref |= touched(*op[1:])
        elif op[0] == "clear_range":
            b.clear_range(*op[1:])
            ref -= touched(*op[1:])
        elif op[0] == "clear_chunk":
            b.clear_chunk(op[1])
            ref.discard(op[1])
        elif op[0] == "set_all":
            b.set_all()
            ref = set(range(n))
        elif op[0] == "extents":
            start, limit = op[1:]
            end = n if limit is None else min(limit, n)
            got = b.extents(start, limit)
            assert got == model_runs([start <= c < end and c in ref for c in range(n)], cs, size)
            seen.append(got)
        else:
            got = b.next_set(op[1])
            assert got == min((c for c in ref if c >= op[1]), default=-1)
            seen.append(got)
    assert b.count() == len(ref)
    assert {c for c in range(n) if b.test(c)} == ref
    data = b.to_bytes()
    assert int.from_bytes(data, "little") == sum(1 << c for c in ref)
    assert mod.ChunkBitmap.from_bytes(size, cs, data).count() == len(ref)
    seen.append(data)
    return seen


@settings(max_examples=150, deadline=None)
@given(bitmap_ops())
def test_bitmap_matches_set_model(em, case):
    run_bitmap_ops(em, *case)


@settings(max_examples=100, deadline=None)
@given(bitmap_ops())
def test_bitmap_implementations_agree(case):
    results = [run_bitmap_ops(mod, *case) for mod in pyx.available("epochmap")]
    assert results[1:] == results[:1] * (len(results) - 1)


def outcome(fn):
    """What a call did: ("ok", result) or (exception type name, message)."""
    try:
        return "ok", fn()
    except Exception as exc:   # noqa: BLE001  (any difference between the implementations is the finding)
        return type(exc).__name__, str(exc)


wild = st.one_of(st.integers(-3, 70), st.sampled_from([-(1 << 63), (1 << 32) - 1, 1 << 32, 1 << 63, 1 << 64, 1 << 80]),
                 st.sampled_from([None, 1.0, "3", True]))


geometry_args = st.sampled_from([-16, 0, 1, 3, 16, 1000, 1 << 64, 1 << 80, 16.0, None])


@settings(max_examples=200, deadline=None)
@given(wild, wild, wild, wild, geometry_args, geometry_args)
def test_implementations_agree_on_bad_arguments(a, b, c, d, size, chunk_size):
    """Every call with odd arguments does the same thing (result or exception type and message) in both."""
    results = []
    for mod in pyx.available("epochmap"):
        m, bm = mod.EpochMap(64 * 16 + 5, 16), mod.ChunkBitmap(64 * 16 + 5, 16)
        results.append([
            outcome(lambda: m.mark(a, b, c)), outcome(lambda: m.extents_since(a, b, c)),
            outcome(lambda: m.extents_since(d)), outcome(lambda: m.count_since(a)), outcome(lambda: m.get(b)),
            outcome(lambda: m.set_all(d)),
            outcome(lambda: repr(mod.EpochMap(size, chunk_size))),
            outcome(lambda: repr(mod.ChunkBitmap(size, chunk_size))),
            outcome(lambda: bm.set_range(a, b)), outcome(lambda: bm.clear_range(c, d)), outcome(lambda: bm.test(a)),
            outcome(lambda: bm.clear_chunk(b)), outcome(lambda: bm.next_set(c)), outcome(lambda: bm.extents(c, d)),
            m.to_bytes(), bm.to_bytes(),
        ])
    assert results[1:] == results[:1] * (len(results) - 1)


# ---------------------------------------------------------------- selection


def test_compiled_module_is_selected_when_built():
    mod = pyx.compiled("epochmap")
    if pyx.extensions_disabled():
        assert pyx.select("epochmap").__name__ == "splitpoint.pyx.epochmap_py"
    elif mod is None:
        pytest.skip("epochmap extension not built")
    else:
        assert pyx.select("epochmap") is mod
        assert mod.__file__.endswith((".so", ".pyd"))
