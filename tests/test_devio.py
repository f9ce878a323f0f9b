"""DeviceQueue: a member's I/O in stream order on a worker thread (firmware/devio.py)."""
import random
import threading

import pytest

from splitpoint.firmware import devio
from splitpoint.firmware.devio import DeviceBackloggedError, DeviceQueue
from splitpoint.hal import HalError, open_device
from splitpoint.hal.filters.delay import DelayIO
from splitpoint.hal.filters.error import InjectedIOError

BOUND = 30   # seconds: only ends a hung wait


class Gate:
    """A device whose every op waits until the test opens the gate (a board that is slow on demand)."""

    def __init__(self, dev):
        self.dev = dev
        self.open = threading.Event()
        self.fail_next = None

    def __getattr__(self, name):
        return getattr(self.dev, name)

    def _pass(self):
        assert self.open.wait(BOUND)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def write(self, offset, data, fua=False):
        self._pass()
        self.dev.write(offset, data, fua)

    def read(self, offset, length):
        self._pass()
        return self.dev.read(offset, length)

    def flush(self):
        self._pass()


@pytest.fixture
def ram():
    return open_device("ram://?size=1M&block=512")


def test_ops_run_in_stream_order_and_a_read_sees_every_write_before_it(ram):
    dq = DeviceQueue(DelayIO(ram, random.Random(0), 0.001), "member")
    for i in range(50):
        dq.write(0, bytes([i]) * 4096)      # the same block, overwritten in order
    assert dq.read(0, 4096) == bytes([49]) * 4096
    dq.close()


def test_the_loop_never_waits_for_a_blocked_device(ram):
    gate = Gate(ram)
    dq = DeviceQueue(gate, "member")
    for i in range(20):
        dq.write(i * 4096, b"w" * 4096)     # returns although the device takes nothing yet
    got = []
    dq.read_async(0, 4096, lambda data, err: got.append((data, err)))
    assert dq.queued_bytes == 20 * 4096 and not got and dq.write_budget() < 20 * 4096
    gate.open.set()
    assert dq.drain(BOUND)
    assert got == [(b"w" * 4096, None)] and dq.queued_bytes == 0
    dq.close()


def test_a_device_error_is_reported_once_and_the_queue_works_again(ram):
    gate = Gate(ram)
    woken = threading.Event()
    dq = DeviceQueue(gate, "member", wakeup=woken.set)
    gate.fail_next = InjectedIOError("medium error")
    dq.write(0, b"a" * 4096)                # fails
    dq.write(4096, b"b" * 4096)             # queued after it: out of order now, dropped
    gate.open.set()
    assert dq.drain(BOUND) and woken.wait(BOUND)
    err = dq.failed()
    assert isinstance(err, InjectedIOError) and dq.failed() is None
    assert ram.read(4096, 4096) == bytes(4096)
    dq.write(8192, b"c" * 4096)             # the next activation's writes run
    assert dq.read(8192, 4096) == b"c" * 4096
    dq.close()


def test_an_error_not_yet_reported_fails_the_next_op_the_loop_hands_over(ram):
    gate = Gate(ram)
    dq = DeviceQueue(gate, "member")
    gate.fail_next = InjectedIOError("medium error")
    gate.open.set()
    dq.write(0, b"a" * 4096)
    assert dq.drain(BOUND)
    with pytest.raises(InjectedIOError):
        dq.write(4096, b"b" * 4096)         # the pool's apply turns this into a demotion
    dq.close()


def test_a_device_that_falls_too_far_behind_refuses_more_writes(ram, monkeypatch):
    monkeypatch.setattr(devio, "BACKLOG_MIN", 64 << 10)
    monkeypatch.setattr(devio, "BACKLOG_TIME", 0.0)
    gate = Gate(ram)
    dq = DeviceQueue(gate, "member")
    with pytest.raises(DeviceBackloggedError, match="bytes of mirror writes wait"):
        for i in range(100):
            dq.write(i * 4096, b"x" * 4096)
    assert dq.queued_bytes <= (64 << 10) + 4096
    gate.open.set()
    dq.close()


def test_read_ahead_serves_a_sequential_scan_and_never_a_stale_slice(ram):
    ram.write(0, bytes(range(256)) * 4096)
    gate = Gate(ram)
    gate.open.set()
    dq = DeviceQueue(gate, "member")
    step = 64 << 10
    assert dq.read(0, step) == ram.read(0, step)          # and the next slice is fetched ahead
    assert dq.drain(BOUND) and dq.read_budget() == step    # it has arrived: reading it will not wait
    gate.open.clear()
    assert dq.read(step, step) == ram.read(step, step)     # served from the read-ahead, the gate closed
    gate.open.set()
    assert dq.drain(BOUND)
    dq.write(2 * step, b"\xee" * 4096)                     # after the read-ahead of [2 step, 3 step)
    assert dq.read(2 * step, step)[:4096] == b"\xee" * 4096
    dq.close()


def test_a_failed_read_reaches_its_callback(ram):
    gate = Gate(ram)
    dq = DeviceQueue(gate, "member")
    gate.fail_next = InjectedIOError("medium error")
    got = []
    dq.read_async(0, 4096, lambda data, err: got.append((data, err)))
    gate.open.set()
    assert dq.drain(BOUND)
    assert got[0][0] is None and isinstance(got[0][1], HalError)
    dq.close()


def test_a_resync_copy_into_a_queued_member_is_ordered_behind_its_queued_writes(tmp_path):
    """copy_from goes through the queue: it never reaches the backend's own (kernel) copy past writes still queued."""
    src = open_device(f"file://{tmp_path}/src.img?size=1M&block=4096&create=1")
    member = open_device(f"file://{tmp_path}/member.img?size=1M&block=4096&create=1")
    src.write(0, b"S" * 8192)
    gate = Gate(member)
    dq = DeviceQueue(gate, "member")
    dq.write(0, b"w" * 8192)                 # queued, the device takes nothing yet
    assert dq.copy_from(src, [(0, 8192)]) == 8192
    gate.open.set()
    assert dq.drain(BOUND)
    assert member.read(0, 8192) == b"S" * 8192   # the copy landed after the write, as sequenced
    dq.close()
    src.close()
