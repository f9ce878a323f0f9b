"""Hardware in the loop: the serial/board backends through real pyserial on ptys, against emulated
boards, and against a real board when one is named (--board BOARD_ID --port URL).

The emulated link runs unlimited (rate=0) so the suite stays fast; the benchmark
(bench/bench_serial.py) is where the modelled link rates matter.
"""
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import serial
import xxhash

from splitpoint.boards.schema import load_board
from splitpoint.boards.emulator import Emulator
from splitpoint.hal import BadURLError, DeviceGoneError, ReadOnlyError, open_device
from splitpoint.hal.filters import FrameChain, wrap_device
from splitpoint.hal.filters.stall import StallFrames
from splitpoint.hal.serial_dev import BoardIOError, BoardResetError, SerialDevice, WireProtocolError

BOARD = "emu-usb-fs"
FAST = "rto=0.05&rate=200M&retries=16"  # host timers for an unlimited emulated link; with backoff ~6 s before giving up, so a loaded CI machine is not a dead board


class CountingDevice:
    """Wraps the emulator's medium to count every write that reaches it."""

    def __init__(self, dev):
        self.dev = dev
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self.dev, name)

    def write(self, offset, data, fua=False):
        self.writes += 1
        self.dev.write(offset, data, fua)


@pytest.fixture
def emulate(tmp_path):
    """emulate(faults=None, storage=None, **kw) -> (Emulator, board URL); stopped at teardown."""
    started = []

    def start(faults=None, storage=None, board=BOARD, url_opts=FAST, **kw):
        link = str(tmp_path / f"link{len(started)}")
        b = load_board(board)
        dev = storage or open_device(f"ram://?size=8M&block={b.block_size}")
        emu = Emulator(b, link, dev, faults=faults, rate=kw.pop("rate", 0), seed=kw.pop("seed", 1), **kw).start()
        started.append(emu)
        return emu, f"board://{board}?port={link}&{url_opts}"

    yield start
    for emu in started:
        emu.stop()


@pytest.fixture(params=["emulated", "hardware"])
def board_url(request, emulate):
    """A board URL: an emulated board, or the real one named on the command line."""
    if request.param == "hardware":
        board, port = request.getfixturevalue("board_option")
        return f"board://{board}?port={port}"
    return emulate()[1]


def digest(data) -> int:
    return xxhash.xxh3_64_intdigest(data)


def random_workload(dev, rng, count, span, sizes=(4096, 16384, 65536)):
    """Random writes over [0, span); returns the reference image."""
    ref = bytearray(span)
    for _ in range(count):
        n = rng.choice(sizes)
        off = rng.randrange(0, (span - n) // dev.block_size + 1) * dev.block_size
        data = rng.randbytes(n)
        dev.write(off, data)
        ref[off:off + n] = data
    return ref


def test_random_data_round_trip(board_url):
    rng = random.Random(7)
    with open_device(board_url) as dev:
        span = min(dev.size, 2 << 20)
        ref = random_workload(dev, rng, 60, span)
        assert digest(dev.read(0, span)) == digest(ref)
        dev.write_zeroes(0, 65536, fua=True)
        dev.trim(65536, 4096)
        dev.flush()
        ref[0:65536] = bytes(65536)
        assert digest(dev.read(0, 65536)) == digest(ref[:65536])
        assert dev.read(65536, 4096) == bytes(4096)


def test_pipelined_submissions_complete_in_order(board_url):
    with open_device(board_url) as dev:
        blocks = [os.urandom(4096) for _ in range(64)]
        pend = [dev.submit_write(i * 4096, b) for i, b in enumerate(blocks)]
        for p in pend:
            assert p.result(30) is None
        reads = [dev.submit_read(i * 4096, 4096) for i in range(64)]
        assert [r.result(30) for r in reads] == blocks


@pytest.mark.parametrize("faults", [
    "drop=1%", "corrupt=1%", "duplicate=1%", "reorder=1%",
    "drop=1%,corrupt=1%,duplicate=1%,reorder=1%",
])
def test_no_block_lost_or_corrupted_under_link_faults(emulate, faults):
    storage = CountingDevice(open_device("ram://?size=8M&block=512"))
    emu, url = emulate(faults=faults, storage=storage, seed=11)
    rng = random.Random(3)
    with open_device(url) as dev:
        ref = random_workload(dev, rng, 150, 4 << 20, sizes=(4096, 16384))
        assert digest(dev.read(0, 4 << 20)) == digest(ref)
        assert digest(storage.dev.read(0, 4 << 20)) == digest(ref)
        acted = sum(emu.rx_chain.counts().values()) + sum(emu.tx_chain.counts().values())
        assert acted > 0, "the filters never fired: the test proved nothing"
        # every WRITE (each fits one frame here) reached the medium exactly once, however often it
        # crossed the link
        assert storage.writes == 150


def test_duplicated_writes_are_applied_once(emulate):
    storage = CountingDevice(open_device("ram://?size=8M&block=512"))
    emu, url = emulate(faults="duplicate=100%,dir=rx", storage=storage)
    with open_device(url) as dev:
        for i in range(20):
            dev.write(i * 4096, bytes([i + 1]) * 4096)
        assert storage.writes == 20
        assert emu.stats["replays"] >= 19  # every second copy was answered from the reply cache
        assert dev.read(0, 20 * 4096) == b"".join(bytes([i + 1]) * 4096 for i in range(20))


def test_unplug_and_replug_mid_stream_loses_and_duplicates_nothing(emulate):
    storage = CountingDevice(open_device("ram://?size=8M&block=512"))
    emu, url = emulate(storage=storage)
    dev = open_device(url + "&reconnect=10s")
    errors = []
    blocks = [os.urandom(4096) for _ in range(300)]

    def writer():
        try:
            for i, b in enumerate(blocks):
                dev.write(i * 4096, b)
        except Exception as exc:  # the assertion below reports it
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    while storage.writes < 50:
        time.sleep(0.005)
    emu.unplug()
    time.sleep(0.3)
    emu.replug()
    while storage.writes < 150 and t.is_alive():
        time.sleep(0.005)
    emu.unplug()
    emu.replug_after(0.2)
    t.join(60)
    assert not errors and not t.is_alive()
    assert dev.stats["reconnects"] >= 2 and emu.plug_count >= 3
    assert storage.writes == len(blocks)  # none lost, none applied twice
    assert dev.read(0, len(blocks) * 4096) == b"".join(blocks)
    dev.close()


def test_disconnect_filter_recovers(emulate):
    emu, url = emulate(faults="disconnect=150:0.1s,dir=rx")
    with open_device(url + "&reconnect=10s") as dev:
        ref = random_workload(dev, random.Random(5), 120, 2 << 20, sizes=(4096, 16384))
        assert digest(dev.read(0, 2 << 20)) == digest(ref)
        assert dev.stats["reconnects"] >= 1 and emu.plug_count >= 2


def test_board_that_stops_answering_raises_device_gone_within_the_bound(emulate):
    emu, url = emulate(faults="stall=40,dir=rx")
    dev = open_device(url.replace(FAST, "rto=0.05&rate=200M&retries=3"))
    t0 = time.monotonic()
    with pytest.raises(DeviceGoneError, match="stopped answering") as info:
        for i in range(100):
            dev.write(i * 4096, os.urandom(4096))
    elapsed = time.monotonic() - t0
    assert "gives up within" in str(info.value)
    assert elapsed < dev.give_up_after + 5.0  # a bound, not a benchmark: the call must not hang
    with pytest.raises(DeviceGoneError):  # and again for the next request, still bounded
        dev.flush()
    dev.close()


def test_board_gone_for_good_raises_device_gone(emulate):
    emu, url = emulate()
    dev = open_device(url + "&reconnect=0.4s")
    dev.write(0, bytes(4096))
    emu.unplug()
    with pytest.raises(DeviceGoneError, match="gone for"):
        dev.write(4096, bytes(4096))
    with pytest.raises(DeviceGoneError):
        dev.read(0, 4096)
    emu.replug()  # plugged back in: the device works again
    deadline = time.monotonic() + 10
    while True:
        try:
            dev.write(8192, b"z" * 4096)
            break
        except DeviceGoneError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert dev.read(8192, 4096) == b"z" * 4096
    dev.close()


def test_board_reset_fails_unacknowledged_requests_specifically(emulate):
    emu, url = emulate()
    dev = open_device(url + "&reconnect=10s")
    dev.write(0, b"a" * 4096)
    emu.rx_chain = FrameChain([StallFrames(random.Random(1), 0)])  # from now on the board hears nothing
    pending = dev.submit_write(4096, b"b" * 4096)
    time.sleep(0.1)
    emu.unplug()
    emu.engine.session = None  # the board lost power: no session, no reply cache
    emu.rx_chain = FrameChain()
    emu.replug()
    with pytest.raises(BoardResetError, match="lost its session"):
        pending.result(30)
    dev.write(8192, b"c" * 4096)  # the new session works
    assert dev.read(8192, 4096) == b"c" * 4096
    dev.close()


def test_garbage_on_the_link_never_crashes_either_side(emulate, tmp_path):
    emu, url = emulate(faults="garbage=20%,seed=4")
    link = url.split("port=")[1].split("&")[0]
    with open_device(url) as dev:
        ref = random_workload(dev, random.Random(9), 40, 1 << 20, sizes=(4096,))
        # raw noise straight into the board: long runs without a delimiter, lone zeros, random bytes
        noise = serial.serial_for_url(link, timeout=0.1)
        noise.write(os.urandom(200_000) + b"\x00" * 50 + bytes(range(1, 256)) * 400 + os.urandom(5000))
        noise.close()
        # and noise from the board to the host
        emu._transmit(os.urandom(100_000))
        emu._transmit(b"\x01" * 300_000)
        assert digest(dev.read(0, 1 << 20)) == digest(ref)
        dev.write(0, b"k" * 4096)
        assert dev.read(0, 4096) == b"k" * 4096
    assert emu.decoder.rejected > 0 and emu.decoder.garbage_bytes > 200_000
    assert all(t.is_alive() for t in emu._threads)


def test_board_errors_map_to_specific_exceptions(emulate):
    emu, url = emulate(storage=wrap_device(open_device("ram://?size=8M&block=512"), "error=100%"))
    with open_device(url) as dev:
        with pytest.raises(BoardIOError, match="injected medium error"):
            dev.write(0, bytes(4096))
    emu2, url2 = emulate(storage=open_device("ram://?size=8M&block=512&readonly=1"))
    with open_device(url2) as dev:
        assert dev.read_only
        with pytest.raises(ReadOnlyError):
            dev.write(0, bytes(4096))
        assert dev.read(0, 512) == bytes(512)


def test_wrong_board_on_the_port_is_refused(emulate):
    emu, url = emulate()
    port = url.split("port=")[1].split("&")[0]
    with pytest.raises(WireProtocolError, match="not 'emu-uart-3m'"):
        open_device(f"board://emu-uart-3m?port={port}&{FAST}")
    with open_device(f"serial://{port}?baud=3000000&{FAST}") as dev:  # serial:// takes any board
        assert dev.info.board_id == BOARD


def test_nothing_on_the_port_fails_fast_with_advice(tmp_path):
    with pytest.raises(DeviceGoneError, match="cannot open serial port"):
        open_device(f"serial://{tmp_path}/none?reconnect=0.1s")
    silent = tmp_path / "silent"
    master, slave = os.openpty()
    os.symlink(os.ttyname(slave), silent)
    try:
        with pytest.raises(DeviceGoneError, match="no board answered INFO"):
            open_device(f"serial://{silent}?rto=0.02&retries=1")
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("url,needle", [
    ("serial:///dev/x?speed=9", "unknown option 'speed'"),
    ("serial:///dev/x?window=99", "out of range"),
    ("serial:///dev/x?rto=soon", "not a duration"),
    ("serial://?baud=9600", "names no port"),
    ("board://no-such?port=/dev/x", "no board definition"),
    ("board://emu-uart-3m", "needs port=PATH"),
    ("board://emu-uart-3m?port=/dev/x&baud=1", "unknown option 'baud'"),
])
def test_bad_urls_name_the_grammar(url, needle):
    with pytest.raises(BadURLError, match=needle):
        open_device(url)


def test_control_channel_line_protocol(emulate, tmp_path):
    ctl_path = str(tmp_path / "ctl")
    got = []
    emu, url = emulate(control_link=ctl_path, trigger_listener=lambda label: (got.append(label), (len(got), 42))[1])
    ctl = serial.serial_for_url(ctl_path, timeout=5)
    try:
        ctl.write(b"PING\n")
        assert ctl.readline() == b"PONG\n"
        ctl.write(b"TRIGGER nightly backup\n")
        assert ctl.readline() == b"OK 1 seq=42\n" and got == ["nightly backup"]
        ctl.write(b"STATUS\n")
        assert json.loads(ctl.readline())["board"] == "emu-usb-fs"
        ctl.write(b"TRIGGER " + b"x" * 65 + b"\n")
        assert ctl.readline().startswith(b"ERR label is 65 bytes; at most 64")
        ctl.write(b"\xff\xfe\n")
        assert ctl.readline() == b"ERR line is not UTF-8\n"
        ctl.write(b"REBOOT\n")
        assert ctl.readline().startswith(b"ERR unknown command 'REBOOT'")
    finally:
        ctl.close()
    emu.trigger_listener = None
    assert emu.control_line("TRIGGER x").startswith("ERR no controller")


def test_wire_trigger_reaches_the_board_in_sequence(emulate):
    seen = []
    emu, url = emulate(on_trigger=lambda *a: seen.append(a))
    with open_device(url) as dev:
        dev.write(0, b"q" * 4096)
        dev.trigger(9, "cut")
        assert seen == [(9, "cut", dev.next_seq - 1)] == emu.triggers


def test_emulate_command_runs_until_sigterm(tmp_path):
    link, ctl = tmp_path / "cli-link", tmp_path / "cli-ctl"
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", "emu-uart-3m", "--link", str(link),
                             "--control-link", str(ctl), "--rate", "0", "--faults", "duplicate=5%"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (link.exists() and ctl.exists()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        with open_device(f"board://emu-uart-3m?port={link}&{FAST}") as dev:
            dev.write(0, b"e" * 4096)
            assert dev.read(0, 4096) == b"e" * 4096
        c = serial.serial_for_url(str(ctl), timeout=5)
        c.write(b"TRIGGER from-test\n")
        assert c.readline().startswith(b"OK 1 seq=")
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "board emu-uart-3m" in out and "control TRIGGER 1 'from-test'" in out and "stopped:" in out
    bad = subprocess.run([sys.executable, "-m", "splitpoint", "emulate", "emu-uart-3m", "--link", str(link),
                          "--faults", "warp=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown fault filter 'warp'" in bad.stderr


def test_serial_device_over_a_socket_url(emulate, tmp_path):
    """Any pyserial URL works: socat bridges a TCP port on loopback to the emulator's pty."""
    import shutil
    import socket

    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    emu, url = emulate()
    link = url.split("port=")[1].split("&")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"FILE:{link},rawer"],
                            stderr=subprocess.DEVNULL)
    try:
        # socat takes one connection; retry the open (a refused connect does not use it up) until it listens
        deadline = time.monotonic() + 20
        while True:
            try:
                # socat adds a hop and a thread to the path: allow it more time than the direct pty tests
                dev = open_device(f"serial://socket://127.0.0.1:{port}?rto=0.2&rate=200M&retries=20")
                break
            except Exception:
                assert time.monotonic() < deadline, "socat never started listening"
                time.sleep(0.05)
        with dev:
            dev.write(0, b"s" * 16384)
            assert dev.read(0, 16384) == b"s" * 16384
    finally:
        proc.kill()
        proc.wait()


def test_sessions_are_distinct_per_open(emulate):
    emu, url = emulate()
    a = open_device(url)
    a.write(0, b"1" * 512)
    a.close()
    b = open_device(url)
    assert isinstance(b, SerialDevice) and emu.stats["sessions"] == 2
    assert b.read(0, 512) == b"1" * 512
    b.close()


@pytest.mark.parametrize("offset,length,error", [
    (0, 0, "ZeroLengthError"),
    (8 << 20, 512, "OutOfRangeError"),
    ((8 << 20) - 512, 1024, "OutOfRangeError"),
    (2**63, 512, "OutOfRangeError"),
    (-512, 512, "OutOfRangeError"),
    (100, 512, "MisalignedError"),
    (0, 100, "MisalignedError"),
])
def test_hal_contract_bounds_on_the_serial_backend(emulate, offset, length, error):
    from splitpoint import hal

    emu, url = emulate()
    with open_device(url) as dev:
        assert dev.size == 8 << 20 and dev.block_size == 512 and dev.buffer() is None
        cls = getattr(hal, error)
        with pytest.raises(cls):
            dev.read(offset, length)
        with pytest.raises(cls):
            dev.write(offset, bytes(max(length, 0)))
        with pytest.raises(cls):
            dev.trim(offset, length)
        assert emu.stats["executed"] == 0  # refused on the host, before the link
    with pytest.raises(hal.DeviceClosedError):
        dev.read(0, 512)
    assert "emu-usb-fs" in dev.describe()


def test_hung_board_that_stops_reading_still_gives_up_within_the_bound(emulate):
    """The host's writes block once the line is full; the timers still count and give up."""
    emu, url = emulate()
    dev = open_device(url.replace(FAST, "rto=0.05&rate=200M&retries=3"))
    dev.write(0, bytes(4096))
    emu.hang()
    t0 = time.monotonic()
    with pytest.raises(DeviceGoneError, match="stopped answering"):
        while True:
            dev.write(0, os.urandom(65536))
    assert time.monotonic() - t0 < dev.give_up_after + 5.0 + dev.window * 1.0  # plus blocked writes' timeouts
    emu.hang(False)
    dev.close()
