"""Fault filters: spec parsing, each link filter, each device filter, stacking."""
import random

import pytest

from splitpoint.hal import DeviceGoneError, open_device
from splitpoint.hal.filters import FaultSpecError, FrameChain, frame_chain, parse_spec, wrap_device
from splitpoint.hal.filters.error import InjectedIOError
from splitpoint.hal.wire import frame as fr

FRAMES = [fr.encode_frame(3, 0, i, bytes([i % 251 + 1]) * 40) for i in range(400)]


def run(chain, frames=FRAMES, step=0.001):
    out, now = [], 0.0
    for f in frames:
        now += step
        out += chain.push(f, now)
        out += chain.poll(now)
    out += chain.poll(now + 10)
    return out


def test_spec_grammar():
    filters, opts = parse_spec("drop=1%, corrupt=0.5,delay=5ms,stall=20,disconnect=100:0.2s,seed=4,dir=rx")
    assert filters == [("drop", (0.01,)), ("corrupt", (0.5,)), ("delay", (0.005,)), ("stall", (20,)),
                       ("disconnect", (100, 0.2))]
    assert opts == {"seed": 4, "dir": "rx"}
    assert parse_spec(None) == ([], {"seed": None, "dir": "both"})
    for bad, needle in [("warp=1", "unknown fault filter 'warp'"), ("drop=2", "between 0 and 1"),
                        ("drop", "has no value"), ("delay=fast", "not a duration"), ("stall=0", "positive"),
                        ("disconnect=5", "takes count:duration"), ("dir=up", "use both, rx")]:
        with pytest.raises(FaultSpecError, match=needle):
            parse_spec(bad)
    with pytest.raises(FaultSpecError, match="acts on devices"):
        frame_chain("error=0.1", "rx")
    with pytest.raises(FaultSpecError, match="acts on a link"):
        wrap_device(open_device("ram://?size=64K"), "garbage=0.1")


def test_empty_chain_passes_everything():
    assert run(FrameChain()) == FRAMES


def test_drop_rate_and_determinism():
    a = run(frame_chain("drop=0.1,seed=3", "rx"))
    b = run(frame_chain("drop=0.1,seed=3", "rx"))
    assert a == b and 0 < len(FRAMES) - len(a) < 100
    assert a == [f for f in FRAMES if f in a]  # order kept


def test_corrupt_changes_one_byte_and_is_always_rejected():
    chain = frame_chain("corrupt=0.2,seed=1", "tx")
    out = run(chain)
    assert len(out) == len(FRAMES) and chain.filters[0].count > 20
    dec = fr.FrameDecoder()
    good = dec.feed(b"".join(out))
    assert len(good) + dec.rejected >= len(FRAMES) - chain.filters[0].count + chain.filters[0].count
    assert len(good) == len(FRAMES) - chain.filters[0].count


def test_duplicate_and_reorder():
    dup = run(frame_chain("duplicate=0.1,seed=2", "rx"))
    assert len(dup) > len(FRAMES) and sorted(set(dup)) == sorted(FRAMES)
    chain = frame_chain("reorder=0.1,seed=2", "rx")
    out = run(chain)
    assert sorted(out) == sorted(FRAMES) and out != FRAMES and chain.filters[0].count > 10


def test_reorder_releases_a_held_frame_when_the_link_goes_quiet():
    chain = frame_chain("reorder=1,seed=1", "rx")
    assert chain.push(FRAMES[0], 0.0) == []
    assert chain.next_due() == pytest.approx(0.05)
    assert chain.poll(0.01) == [] and chain.poll(0.06) == [FRAMES[0]]


def test_delay_holds_every_frame():
    chain = frame_chain("delay=10ms", "rx")
    assert chain.push(FRAMES[0], 1.0) == []
    assert chain.poll(1.005) == [] and chain.poll(1.011) == [FRAMES[0]]


def test_garbage_and_direction():
    chain = frame_chain("garbage=0.2,seed=5,dir=tx", "tx")
    out = run(chain)
    dec = fr.FrameDecoder()
    got = dec.feed(b"".join(out))
    assert len(out) > len(FRAMES) and dec.rejected > 0 and len(got) <= len(FRAMES)
    assert frame_chain("garbage=0.2,dir=tx", "rx").filters == []


def test_stall_forever_and_for_a_while():
    chain = frame_chain("stall=5", "rx")
    assert len(run(chain)) == 5
    chain = frame_chain("stall=5:0.1s", "rx")
    assert len(run(chain, step=0.01)) == len(FRAMES) - 10


def test_disconnect_calls_the_link():
    calls = []

    class Link:
        def unplug(self):
            calls.append("unplug")

        def replug_after(self, s):
            calls.append(s)

    chain = frame_chain("disconnect=100:0.3s", "rx", link=Link())
    assert len(run(chain)) == len(FRAMES) - 4
    assert calls == ["unplug", 0.3] * 4


def ram():
    return open_device("ram://?size=256K&block=512")


def test_device_drop_and_duplicate_writes():
    dev = wrap_device(ram(), "drop=1")
    dev.write(0, b"\xaa" * 512)
    assert dev.read(0, 512) == bytes(512) and dev.count == 1
    dev = wrap_device(ram(), "duplicate=1")
    dev.write(512, b"\xbb" * 512)
    assert dev.read(512, 512) == b"\xbb" * 512 and dev.count == 1
    assert dev.buffer() is None  # kernels cannot bypass a filter


def test_device_corrupt_reads_only():
    inner = ram()
    dev = wrap_device(inner, "corrupt=1,seed=9")
    dev.write(0, b"\x11" * 512)
    assert dev.read(0, 512) != b"\x11" * 512
    assert inner.read(0, 512) == b"\x11" * 512
    buf = bytearray(512)
    dev.readinto(0, buf)
    assert bytes(buf) != b"\x11" * 512


def test_device_reorder_keeps_flush_a_barrier():
    inner = ram()
    dev = wrap_device(inner, "reorder=1,seed=1")
    dev.write(0, b"A" * 512)  # held back
    assert inner.read(0, 512) == bytes(512)
    dev.write(0, b"B" * 512)  # applied, then the held one: A lands last
    assert inner.read(0, 512) == b"A" * 512
    dev.write(512, b"C" * 512)
    dev.flush()
    assert inner.read(512, 512) == b"C" * 512


def test_device_error_stall_delay_disconnect():
    dev = wrap_device(ram(), "error=1")
    with pytest.raises(InjectedIOError, match="injected medium error on write"):
        dev.write(0, bytes(512))
    dev = wrap_device(ram(), "stall=2:0.01s,delay=1ms")
    for _ in range(4):
        dev.read(0, 512)
    assert dev.count == 2 and dev.next.count == 4  # the first named (stall) is outermost
    dev = wrap_device(ram(), "disconnect=3:5s")
    dev.read(0, 512)
    dev.read(0, 512)
    with pytest.raises(DeviceGoneError, match="disconnected"):
        dev.read(0, 512)
    with pytest.raises(DeviceGoneError, match="for another"):
        dev.write(0, bytes(512))
    assert "DisconnectDevice over ram" in dev.describe()
    dev.close()


def test_rates_are_honoured_on_devices():
    dev = wrap_device(ram(), "drop=0.3,seed=11")
    rng = random.Random(0)
    for i in range(200):
        dev.write(512 * (i % 500), bytes([rng.randrange(1, 256)]) * 512)
    assert 30 < dev.count < 90
