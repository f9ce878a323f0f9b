"""Resync building blocks: extent arithmetic, the sweep cursor, and the throttle's budgets."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import pyx
from splitpoint.firmware.resync import Sweep, Throttle, clip, subtract
from splitpoint.hal.ram import RamDevice

CS = 4096


def _bits(extents, size):
    out = [False] * size
    for off, ln in extents:
        for i in range(off, off + ln):
            out[i] = True
    return out


def _runs(bits):
    out, start = [], None
    for i, b in enumerate(bits + [False]):
        if b and start is None:
            start = i
        elif not b and start is not None:
            out.append((start, i - start))
            start = None
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=64), st.lists(st.booleans(), min_size=1, max_size=64))
def test_subtract_is_set_difference(a, b):
    n = max(len(a), len(b))
    a, b = a + [False] * (n - len(a)), b + [False] * (n - len(b))
    got = _bits(subtract(_runs(a), _runs(b)), n)
    assert got == [x and not y for x, y in zip(a, b)]


def test_clip_keeps_whole_chunks_within_the_budget():
    ext = [(0, 3 * CS), (8 * CS, CS)]
    assert clip(ext, 10 * CS, CS) == ext
    assert clip(ext, 2 * CS, CS) == [(0, 2 * CS)]
    assert clip(ext, 100, CS) == [(0, CS)]              # at least one chunk
    assert clip(ext, 3 * CS + 100, CS) == [(0, 3 * CS)]


def test_sweep_copies_only_chunks_changed_since_and_ends_identical():
    em = pyx.select("epochmap").EpochMap(64 * CS, CS)
    src, dst = RamDevice(64 * CS), RamDevice(64 * CS)
    for c in (3, 4, 40):
        src.write(c * CS, bytes([c]) * CS)
    em.mark(3 * CS, 2 * CS, 2)
    em.mark(40 * CS, CS, 5)
    src.write(10 * CS, b"\x09" * CS)
    em.mark(10 * CS, CS, 1)                    # before `since`: the member already has it
    dst.write(10 * CS, b"\x09" * CS)
    sweep = Sweep(em, since=2)
    steps = 0
    while not sweep.done:
        sweep.step(src, dst, CS)
        steps += 1
    assert sweep.copied == 3 * CS and sweep.total == 3 * CS
    assert dst.read(0, 64 * CS) == src.read(0, 64 * CS)
    assert sweep.progress()["percent"] == 100.0


def test_a_cut_sweep_leaves_chunks_written_after_the_cut_alone():
    em = pyx.select("epochmap").EpochMap(8 * CS, CS)
    em.mark(0, 8 * CS, 2)
    sweep = Sweep(em, since=2, until=3)
    em.mark(CS, CS, 4)                          # written after the cut (copied on write before it was)
    assert sweep.pending(0, 8) == [(0, CS), (2 * CS, 6 * CS)]


def test_throttle_busy_steps_are_one_chunk_and_idle_steps_a_slice():
    em = pyx.select("epochmap").EpochMap(1024 * CS, CS)
    em.mark(0, 1024 * CS, 1)
    t = Throttle(slice_bytes=64 * CS, chunk_size=CS)
    sweep = Sweep(em, since=1)
    assert t.budget(sweep, busy=True) == CS
    assert t.budget(sweep, busy=False) == 64 * CS


def test_throttle_rate_spaces_single_chunks():
    em = pyx.select("epochmap").EpochMap(1024 * CS, CS)
    t = Throttle(rate=CS * 100, slice_bytes=64 * CS, chunk_size=CS)
    sweep = Sweep(em, since=1)
    now = t._last
    assert t.budget(sweep, busy=False, now=now) == CS     # never a burst: one chunk of tokens at most
    t.spend(CS)
    assert t.budget(sweep, busy=False, now=now + 0.001) == 0
    assert t.delay() > 0
    assert t.budget(sweep, busy=False, now=now + 0.011) == CS


def test_throttle_deadline_paces_busy_steps_to_the_schedule():
    em = pyx.select("epochmap").EpochMap(1024 * CS, CS)
    em.mark(0, 1024 * CS, 1)
    t = Throttle(deadline=1.0, slice_bytes=256 * CS, chunk_size=CS)
    sweep = Sweep(em, since=1, deadline=1.0)
    sweep.count_total()
    start = sweep.started
    t._last = start
    # 10 % of the time gone: a tenth of what is left to do, far more than one chunk
    assert t.budget(sweep, busy=True, now=start + 0.1) == pytest.approx(1024 * CS * 0.1 / 0.9, rel=0.01)
    assert t.budget(sweep, busy=True, now=start + 2.0) == 256 * CS   # late: full slices
