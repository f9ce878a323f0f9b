"""The sequenced request ring: both implementations, alone, in lock step, and across threads."""
from __future__ import annotations

import collections
import gc
import os
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import kernel_params
from tests.watchdog import in_child
from splitpoint import pyx

RING_KINDS = ("SPSCRing", "MPSCRing")
U16, U32, U64 = 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF


@pytest.fixture(params=kernel_params("ring"))
def impl(request):
    return request.param


@pytest.fixture(params=RING_KINDS)
def kind(request):
    return request.param


def is_compiled(mod) -> bool:
    return not mod.__name__.endswith("_py")


def load(mod):
    """The load loops (ringload) that drive rings of the ring implementation ``mod``."""
    return pyx.compiled("ringload") if is_compiled(mod) else pyx.twin("ringload")


def descs(mod, rows):
    """A DESC_DTYPE array from (op, flags, offset, length, cookie) rows, seq left 0."""
    arr = np.zeros(len(rows), mod.DESC_DTYPE)
    for i, (op, flags, offset, length, cookie) in enumerate(rows):
        arr[i] = (0, offset, cookie, length, op, flags)
    return arr


def as_tuples(arr):
    """Rows of a DESC_DTYPE array in pop()'s order (seq, op, flags, offset, length, cookie)."""
    return [(s, op, f, o, ln, c) for s, o, c, ln, op, f in arr.tolist()]


# ---------------------------------------------------------------- construction

def test_descriptor_dtype_is_the_32_byte_c_layout(impl):
    dt = impl.DESC_DTYPE
    assert dt.itemsize == 32
    assert [(name, dt.fields[name][1], dt.fields[name][0].str) for name in dt.names] == [
        ("seq", 0, "<u8"), ("offset", 8, "<u8"), ("cookie", 16, "<u8"),
        ("length", 24, "<u4"), ("op", 28, "<u2"), ("flags", 30, "<u2")]


@pytest.mark.parametrize("capacity", [0, -4, 3, 6, 12, 1000])
def test_capacity_not_a_power_of_two_is_rejected(impl, kind, capacity):
    with pytest.raises(ValueError, match="power of two"):
        getattr(impl, kind)(capacity)


def test_capacity_limits(impl, kind):
    ring = getattr(impl, kind)
    assert ring(1).capacity == 1
    assert ring(1024).capacity == 1024
    with pytest.raises(ValueError, match="maximum"):
        ring(impl.MAX_CAPACITY * 2)
    with pytest.raises(TypeError):
        ring(8.0)
    with pytest.raises(TypeError):
        ring("8")


@pytest.mark.parametrize("first_seq", [-1, 2 ** 63, 2 ** 64])
def test_first_seq_out_of_range_is_rejected(impl, kind, first_seq):
    with pytest.raises(ValueError, match="first_seq"):
        getattr(impl, kind)(8, first_seq)


def test_new_ring_is_empty(impl, kind):
    ring = getattr(impl, kind)(8)
    assert len(ring) == 0
    assert ring.capacity == 8
    assert ring.next_seq == 1
    assert ring.pop() is None
    assert repr(ring) == f"{kind}(capacity=8, len=0, next_seq=1)"


# ---------------------------------------------------------------- push / pop

def test_push_pop_in_order_with_seqs_from_first_seq(impl, kind):
    ring = getattr(impl, kind)(8, first_seq=100)
    rows = [(1, 0, 0, 4096, 7), (2, 1, 4096, 512, 8), (U16, U16, U64, U32, U64), (0, 0, 0, 0, 0)]
    assert [ring.push(*row) for row in rows] == [100, 101, 102, 103]
    assert len(ring) == 4
    assert ring.next_seq == 104
    for seq, row in zip(range(100, 104), rows):
        assert ring.pop() == (seq, *row)
    assert ring.pop() is None
    assert len(ring) == 0
    assert ring.next_seq == 104


def test_first_seq_zero_and_near_the_top(impl, kind):
    ring = getattr(impl, kind)(4, first_seq=0)
    assert ring.push(1, 0, 0, 0, 0) == 0
    top = getattr(impl, kind)(4, first_seq=2 ** 63 - 1)
    assert [top.push(1, 0, 0, 0, i) for i in range(3)] == [2 ** 63 - 1, 2 ** 63, 2 ** 63 + 1]
    assert [top.pop()[0] for _ in range(3)] == [2 ** 63 - 1, 2 ** 63, 2 ** 63 + 1]


def test_full_ring_returns_minus_one_and_keeps_its_contents(impl, kind):
    ring = getattr(impl, kind)(4)
    assert [ring.push(1, 0, i, 1, i) for i in range(4)] == [1, 2, 3, 4]
    assert ring.push(1, 0, 99, 1, 99) == -1
    assert ring.push(1, 0, 99, 1, 99) == -1
    assert len(ring) == 4
    assert ring.next_seq == 5            # a refused push takes no seq
    assert ring.pop() == (1, 1, 0, 0, 1, 0)
    assert ring.push(1, 0, 4, 1, 4) == 5
    assert [ring.pop()[5] for _ in range(4)] == [1, 2, 3, 4]


def test_capacity_one_ring(impl, kind):
    ring = getattr(impl, kind)(1)
    for i in range(5):
        assert ring.push(1, 0, 0, 0, i) == i + 1
        assert ring.push(1, 0, 0, 0, i) == -1
        assert ring.pop() == (i + 1, 1, 0, 0, 0, i)
        assert ring.pop() is None


@pytest.mark.parametrize("bad, exc", [
    ((1.0, 0, 0, 0, 0), TypeError), ((0, 0, 1.5, 0, 0), TypeError), ((None, 0, 0, 0, 0), TypeError),
    (("1", 0, 0, 0, 0), TypeError), ((-1, 0, 0, 0, 0), OverflowError), ((U16 + 1, 0, 0, 0, 0), OverflowError),
    ((0, U16 + 1, 0, 0, 0), OverflowError), ((0, 0, U64 + 1, 0, 0), OverflowError),
    ((0, 0, 0, U32 + 1, 0), OverflowError), ((0, 0, 0, 0, -1), OverflowError),
])
def test_push_rejects_fields_that_do_not_fit(impl, kind, bad, exc):
    ring = getattr(impl, kind)(4)
    with pytest.raises(exc):
        ring.push(*bad)
    assert len(ring) == 0 and ring.next_seq == 1


def test_push_takes_integer_like_values(impl, kind):
    ring = getattr(impl, kind)(4)
    assert ring.push(np.uint16(3), True, np.uint64(U64), np.int64(7), 8) == 1
    assert ring.pop() == (1, 3, 1, U64, 7, 8)


@in_child(deadline=60)
def test_pop_after_batches_reused_a_slot_returns_the_new_descriptor(impl, kind):
    # the compiled ring keeps push()'s tuple for pop(); a batch through the same slot must win
    ring = getattr(impl, kind)(1)
    assert ring.push(1, 2, 3, 4, 5) == 1
    out = np.zeros(1, impl.DESC_DTYPE)
    assert ring.pop_batch(out) == 1 and as_tuples(out) == [(1, 1, 2, 3, 4, 5)]
    assert ring.push_batch(descs(impl, [(6, 7, 8, 9, 10)])) == 1
    assert ring.pop() == (2, 6, 7, 8, 9, 10)
    assert ring.push(11, 12, 13, 14, 15) == 3
    assert load(impl).consume(ring, 1, timeout=1)["last_seq"] == 3     # a nogil pop
    assert load(impl).produce(ring, 1, 4, 1, timeout=1) == 1             # a nogil push into the slot
    assert ring.pop() == (4, 0, 4, 0, 4096, 4 << 48)


def test_ring_holds_references_only_while_queued(impl, kind):
    big = 10 ** 15 + 7                       # not a cached small int
    base = sys.getrefcount(big)
    ring = getattr(impl, kind)(4)
    for _ in range(100):
        ring.push(1, 0, big, 4096, big)
        item = ring.pop()
        del item
    assert sys.getrefcount(big) == base
    ring.push(1, 0, big, 1, big)
    del ring
    gc.collect()
    assert sys.getrefcount(big) == base


def test_wrap_around_many_times(impl, kind):
    ring = getattr(impl, kind)(4, first_seq=10)
    expect = 10
    for lap in range(2500):
        depth = lap % 4 + 1
        seqs = [ring.push(lap & 7, 0, lap * 4096, 4096, lap * 10 + j) for j in range(depth)]
        assert seqs == list(range(expect, expect + depth))
        for j in range(depth):
            assert ring.pop() == (expect + j, lap & 7, 0, lap * 4096, 4096, lap * 10 + j)
        expect += depth
    assert ring.next_seq == expect and len(ring) == 0


# ---------------------------------------------------------------- batches

def test_push_batch_pushes_the_prefix_that_fits_and_stamps_it(impl, kind):
    ring = getattr(impl, kind)(8, first_seq=50)
    for i in range(3):
        ring.push(1, 0, 0, 0, i)
    batch = descs(impl, [(2, 1, i * 512, 512, 100 + i) for i in range(10)])
    assert ring.push_batch(batch) == 5
    assert batch["seq"].tolist() == [53, 54, 55, 56, 57, 0, 0, 0, 0, 0]
    assert ring.push_batch(batch[5:]) == 0      # full: nothing moves, nothing stamped
    assert batch["seq"][5:].tolist() == [0] * 5
    assert len(ring) == 8 and ring.next_seq == 58

    out = np.zeros(4, impl.DESC_DTYPE)
    assert ring.pop_batch(out) == 4
    assert as_tuples(out) == [(50, 1, 0, 0, 0, 0), (51, 1, 0, 0, 0, 1), (52, 1, 0, 0, 0, 2),
                              (53, 2, 1, 0, 512, 100)]
    big = np.zeros(10, impl.DESC_DTYPE)
    big["cookie"] = 777
    assert ring.pop_batch(big) == 4
    assert as_tuples(big[:4]) == [(54 + i, 2, 1, (1 + i) * 512, 512, 101 + i) for i in range(4)]
    assert big["cookie"][4:].tolist() == [777] * 6 and big["seq"][4:].tolist() == [0] * 6
    assert ring.pop_batch(big) == 0 and len(ring) == 0


def test_empty_batches_move_nothing(impl, kind):
    ring = getattr(impl, kind)(4)
    assert ring.push_batch(np.zeros(0, impl.DESC_DTYPE)) == 0
    assert ring.pop_batch(np.zeros(0, impl.DESC_DTYPE)) == 0
    assert ring.next_seq == 1


def test_batches_larger_than_the_ring_wrap_around(impl, kind):
    ring = getattr(impl, kind)(16, first_seq=1)
    src = descs(impl, [(i & 7, 0, i, 1, i) for i in range(13)])
    out = np.zeros(40, impl.DESC_DTYPE)
    pushed = popped = 0
    for lap in range(200):
        chunk = src[: (lap % 13) + 1].copy()
        k = ring.push_batch(chunk)
        assert chunk["seq"][:k].tolist() == list(range(pushed + 1, pushed + 1 + k))
        pushed += k
        got = ring.pop_batch(out[: (lap % 7) + 1])
        assert out["seq"][:got].tolist() == list(range(popped + 1, popped + 1 + got))
        popped += got
        assert len(ring) == pushed - popped
    assert pushed > 16 * 20


def test_batches_accept_a_memoryview_of_descriptors(impl, kind):
    ring = getattr(impl, kind)(8)
    arr = descs(impl, [(1, 0, 0, 512, 5), (1, 0, 512, 512, 6)])
    assert ring.push_batch(memoryview(arr)) == 2
    assert arr["seq"].tolist() == [1, 2]          # stamped through the view
    out = np.zeros(2, impl.DESC_DTYPE)
    assert ring.pop_batch(memoryview(out)) == 2
    assert out["cookie"].tolist() == [5, 6]


def test_arrays_of_the_other_implementations_dtype_work(impl, kind):
    other = [m for m in pyx.available("ring") if m is not impl] or [impl]
    ring = getattr(impl, kind)(4)
    arr = np.zeros(2, other[0].DESC_DTYPE)
    assert ring.push_batch(arr) == 2


@pytest.mark.parametrize("make, exc, match", [
    (lambda dt: [(0, 0, 0, 0, 0, 0)], TypeError, "DESC_DTYPE"),
    (lambda dt: None, TypeError, "DESC_DTYPE"),
    (lambda dt: np.zeros(4, np.uint64), TypeError, "dtype"),
    (lambda dt: bytearray(64), TypeError, "dtype"),
    (lambda dt: np.zeros((2, 2), dt), ValueError, "1-D"),
    (lambda dt: np.zeros(8, dt)[::2], ValueError, "contiguous"),
    (lambda dt: _read_only(np.zeros(4, dt)), ValueError, "writable"),
])
@pytest.mark.parametrize("method", ["push_batch", "pop_batch"])
def test_batches_reject_what_is_not_a_descriptor_array(impl, kind, make, exc, match, method):
    ring = getattr(impl, kind)(8)
    ring.push(1, 0, 0, 0, 0)
    with pytest.raises(exc, match=match):
        getattr(ring, method)(make(impl.DESC_DTYPE))
    assert len(ring) == 1 and ring.next_seq == 2


def _read_only(arr):
    arr.flags.writeable = False
    return arr


def test_compiled_batches_read_numpy_arrays_without_the_buffer_protocol():
    mod = pyx.compiled("ring")
    if mod is None or pyx.extensions_disabled():
        pytest.skip("compiled ring not built")
    assert mod._NUMPY_FAST_PATH


# ---------------------------------------------------------------- lock step with a model

U16S = st.integers(0, U16)
FIELDS = st.tuples(U16S, U16S, st.integers(0, U64), st.integers(0, U32), st.integers(0, U64))
OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), FIELDS),
    st.tuples(st.just("pop")),
    st.tuples(st.just("push_batch"), st.lists(FIELDS, max_size=10)),
    st.tuples(st.just("pop_batch"), st.integers(0, 10)),
), max_size=80)


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(RING_KINDS), capacity=st.sampled_from([1, 2, 4, 8]),
       first_seq=st.one_of(st.integers(0, 1000), st.integers(0, 2 ** 63 - 1)), ops=OPS)
def test_implementations_agree_with_each_other_and_a_deque(kind, capacity, first_seq, ops):
    mods = pyx.available("ring")
    rings = [getattr(m, kind)(capacity, first_seq) for m in mods]
    model: collections.deque = collections.deque()
    next_seq = first_seq
    for op in ops:
        if op[0] == "push":
            expect = -1 if len(model) == capacity else next_seq
            if expect != -1:
                model.append((next_seq, *op[1]))
                next_seq += 1
            assert [r.push(*op[1]) for r in rings] == [expect] * len(rings)
        elif op[0] == "pop":
            expect = model.popleft() if model else None
            assert [r.pop() for r in rings] == [expect] * len(rings)
        elif op[0] == "push_batch":
            k = min(len(op[1]), capacity - len(model))
            stamped = list(range(next_seq, next_seq + k)) + [0] * (len(op[1]) - k)
            for row, seq in zip(op[1][:k], stamped):
                model.append((seq, *row))
            next_seq += k
            for m, r in zip(mods, rings):
                arr = descs(m, op[1])
                assert r.push_batch(arr) == k
                assert arr["seq"].tolist() == stamped
        else:
            k = min(op[1], len(model))
            expect = [model.popleft() for _ in range(k)]
            for m, r in zip(mods, rings):
                out = np.zeros(op[1], m.DESC_DTYPE)
                out["cookie"] = 0xC0FFEE
                assert r.pop_batch(out) == k
                assert as_tuples(out[:k]) == expect
                assert out["cookie"][k:].tolist() == [0xC0FFEE] * (op[1] - k)   # beyond the prefix: untouched
        assert [(len(r), r.next_seq) for r in rings] == [(len(model), next_seq)] * len(rings)


# ---------------------------------------------------------------- threads

def run_threads(mod, ring, per_producer, producers, produce_batches, consume_batch, timeout=30.0):
    """Producers in threads, the consumer on this thread; returns consume()'s report and the counts pushed."""
    pushed = [None] * producers

    def producer(pid):
        pushed[pid] = load(mod).produce(ring, per_producer, pid, produce_batches[pid % len(produce_batches)], timeout)

    threads = [threading.Thread(target=producer, args=(pid,)) for pid in range(producers)]
    for t in threads:
        t.start()
    try:
        report = load(mod).consume(ring, per_producer * producers, producers, consume_batch, timeout)
    finally:
        for t in threads:
            t.join()
    return report, pushed


def assert_clean(report, pushed, per_producer, producers, first_seq=1):
    total = per_producer * producers
    assert pushed == [per_producer] * producers
    assert report["count"] == total
    assert report["seq_errors"] == 0 and report["order_errors"] == 0 and report["corrupt"] == 0
    assert report["per_producer"] == [per_producer] * producers
    assert (report["first_seq"], report["last_seq"]) == (first_seq, first_seq + total - 1)
    expect_sum = sum((pid << 48) * per_producer + per_producer * (per_producer - 1) // 2 for pid in range(producers))
    assert report["checksum"] == expect_sum % 2 ** 64


@pytest.mark.parametrize("batch", [1, 64])
@in_child(deadline=60)
def test_spsc_threads_small(impl, batch):
    n = 20_000
    ring = impl.SPSCRing(256)
    report, pushed = run_threads(impl, ring, n, 1, [batch], batch)
    assert_clean(report, pushed, n, 1)
    assert len(ring) == 0


@in_child(deadline=60)
def test_mpsc_threads_small(impl):
    n = 5_000
    ring = impl.MPSCRing(64, first_seq=7)
    report, pushed = run_threads(impl, ring, n, 4, [1, 16, 3, 64], 32)
    assert_clean(report, pushed, n, 4, first_seq=7)


@in_child(deadline=60)
def test_mpsc_python_producers_calling_push(impl):
    ring = impl.MPSCRing(1 << 14)
    per, producers = 2000, 4
    seqs = [[] for _ in range(producers)]

    def producer(pid):
        for k in range(per):
            seqs[pid].append(ring.push(k & 7, pid, k * 4096, 4096, pid << 48 | k))

    threads = [threading.Thread(target=producer, args=(pid,)) for pid in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in seqs:
        assert s == sorted(s) and -1 not in s
    assert sorted(x for s in seqs for x in s) == list(range(1, per * producers + 1))
    report = load(impl).consume(ring, per * producers, producers, 128, timeout=5)
    assert_clean(report, [per] * producers, per, producers)


COMPILED = pyx.compiled("ring") if not pyx.extensions_disabled() else None
needs_compiled = pytest.mark.skipif(COMPILED is None, reason="compiled ring not built (or SPLITPOINT_NO_EXTENSIONS=1)")


@needs_compiled
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 256])
@in_child(deadline=240)
def test_spsc_ten_million_descriptors_between_nogil_threads(batch):
    n = 10_000_000
    ring = COMPILED.SPSCRing(4096)
    report, pushed = run_threads(COMPILED, ring, n, 1, [batch], batch)
    assert_clean(report, pushed, n, 1)


@needs_compiled
@pytest.mark.slow
@in_child(deadline=240)
def test_mpsc_ten_million_descriptors_from_four_nogil_producers():
    per, producers = 2_500_000, 4
    ring = COMPILED.MPSCRing(4096)
    report, pushed = run_threads(COMPILED, ring, per, producers, [1, 64, 7, 256], 256)
    assert_clean(report, pushed, per, producers)


@needs_compiled
@in_child(deadline=60)
def test_nogil_producer_with_a_python_consumer():
    ring = COMPILED.MPSCRing(64)
    n = 20_000
    t = threading.Thread(target=load(COMPILED).produce, args=(ring, n, 3, 8))
    t.start()
    got, out = [], np.zeros(16, COMPILED.DESC_DTYPE)
    try:
        while len(got) < n:
            k = ring.pop_batch(out)
            got.extend(out["cookie"][:k].tolist())
            item = ring.pop()
            if item is not None:
                got.append(item[5])
    finally:
        t.join()
    assert got == [3 << 48 | k for k in range(n)]


# ---------------------------------------------------------------- consume() catches what it should

@in_child(deadline=60)
def test_consume_reports_loss_reordering_and_corruption(impl):
    ring = impl.SPSCRing(16)
    ring.push(0, 0, 0, 4096, 0)                 # producer 0, k=0: fine
    ring.push(2, 0, 2 * 4096, 4096, 2)          # k=2: k=1 lost
    ring.push(1, 0, 1 * 4096, 4096, 1)          # k=1 after k=2: reordered
    ring.push(3, 0, 3 * 4096, 4000, 3)          # after k=1 comes k=2 again: out of order; wrong length
    ring.push(0, 9, 0, 4096, 9 << 48)           # producer 9 of 2: unknown
    report = load(impl).consume(ring, 5, producers=2, batch=2, timeout=5)
    assert report["count"] == 5
    assert report["seq_errors"] == 0
    assert report["order_errors"] == 4
    assert report["corrupt"] == 1
    assert report["per_producer"] == [4, 0]


@in_child(deadline=60)
def test_consume_and_produce_give_up_at_the_timeout(impl, kind):
    ring = getattr(impl, kind)(4)
    report = load(impl).consume(ring, 10, timeout=0.05)
    assert report["count"] == 0 and report["first_seq"] is None and report["last_seq"] is None
    assert load(impl).produce(ring, 10, 0, 1, timeout=0.05) == 4
    assert load(impl).produce(ring, 10, 0, 3, timeout=0.05) == 0
    report = load(impl).consume(ring, 10, timeout=0.05)
    assert report["count"] == 4 and report["seq_errors"] == 0


@pytest.mark.parametrize("call, exc", [
    (lambda m, r: m.produce(r, -1), ValueError),
    (lambda m, r: m.produce(r, 1, producer_id=70000), ValueError),
    (lambda m, r: m.produce(r, 1, batch=0), ValueError),
    (lambda m, r: m.consume(r, 1, producers=0), ValueError),
    (lambda m, r: m.consume(r, 1, batch=m.MAX_LOOP_BATCH + 1), ValueError),
    (lambda m, r: m.consume(object(), 1), TypeError),
    (lambda m, r: m.produce(collections.deque(), 1), TypeError),
])
def test_loop_arguments_are_checked(impl, call, exc):
    with pytest.raises(exc):
        call(load(impl), impl.SPSCRing(4))


def test_rings_of_the_other_implementation_are_refused(impl):
    for other in pyx.available("ring"):
        if other is not impl:
            with pytest.raises(TypeError, match="SPSCRing or MPSCRing"):
                load(impl).consume(other.SPSCRing(4), 1, timeout=0.01)


# ---------------------------------------------------------------- one body, loops apart

def test_both_rings_share_one_body(impl):
    assert impl.SPSCRing.__mro__[1] is impl._Ring and impl.MPSCRing.__mro__[1] is impl._Ring
    for name in ("push", "pop", "push_batch", "pop_batch", "__len__", "capacity", "next_seq", "__repr__"):
        assert name not in vars(impl.SPSCRing), f"SPSCRing.{name} is not the shared body's"
    assert "next_seq" not in vars(impl.MPSCRing)


def test_load_loops_live_in_ringload_with_both_implementations():
    assert [load(mod).__name__ for mod in pyx.available("ring")] == [
        m.__name__ for m in pyx.available("ringload")]
    for mod in pyx.available("ring"):
        assert not hasattr(mod, "produce") and not hasattr(mod, "consume")   # the ring is what the controller uses
        assert load(mod).MAX_LOOP_BATCH == pyx.twin("ringload").MAX_LOOP_BATCH


# ---------------------------------------------------------------- selection

def test_compiled_ring_is_selected_by_default():
    if pyx.extensions_disabled():
        assert pyx.select("ring").__name__ == "splitpoint.pyx.ring_py"
        return
    mod = pyx.compiled("ring")
    if mod is None:
        pytest.skip("the compiled ring was not built")
    assert pyx.select("ring") is mod
    assert os.path.basename(mod.__file__).endswith((".so", ".pyd"))
