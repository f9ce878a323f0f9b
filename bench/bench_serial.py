"""Wire protocol throughput: the frame codec against its goal, and the serial backend over the
emulated 3 Mbaud UART and USB full-speed links against each link's payload ceiling.

Codec: encode + decode of one frame, compiled kernel, best of several rounds; the pure-Python twin's
figure and the crc32c package's raw CRC speed are in the raw columns. Goal >= 100 MB/s (ambitious 500).

Serial: an emulated board (`splitpoint emulate`, its own process) paces its pty at the board definition's rate (a pty ignores baud),
and the host keeps a window of requests in flight through ``submit_read``/``submit_write``. The
ceiling is the link rate itself, so protocol overhead (header, CRC, COBS, ACKs) and every stall
count against us. Goal >= 0.9 of the ceiling.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import time

import crc32c
import pytest

from splitpoint import pyx
from splitpoint.boards.schema import load_board
from splitpoint.hal import open_device

ROUNDS = 7


def best_of(rounds, fn):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("size", [4096, 65536])
def test_frame_codec_throughput(benchmark, report, size):
    payload = os.urandom(size)
    reps = max(1, (64 << 20) // size)
    results = {}
    for mod in pyx.available("frame"):
        name = "python" if mod.__name__.endswith("_py") else "compiled"
        wire = mod.encode_frame(3, 0, 1, payload)
        n = reps if name == "compiled" else max(1, reps // 40)
        enc, dec = mod.encode_frame, mod.decode_frame

        def both():
            for _ in range(n):
                dec(enc(3, 0, 1, payload))

        results[name] = n * size / best_of(ROUNDS if name == "compiled" else 2, both) / 1e6
        assert dec(wire)[4] == payload
    ours = results.get("compiled", results["python"])
    crc_mb_s = reps * size / best_of(3, lambda: [crc32c.crc32c(payload) for _ in range(reps)]) / 1e6
    benchmark.pedantic(lambda: pyx.select("frame").decode_frame(pyx.select("frame").encode_frame(3, 0, 1, payload)),
                       rounds=20, iterations=10)
    report(f"frame codec encode+decode, {size // 1024} KiB frames", "goal 100 MB/s", ours / 100, ">= 1.0",
           implementation="compiled" if "compiled" in results else "python",
           crc=getattr(pyx.select("frame"), "CRC_IMPLEMENTATION", "?"), ours_mb_s=round(ours),
           twin_mb_s=round(results["python"]), crc32c_package_mb_s=round(crc_mb_s), ambitious_goal_mb_s=500)


def pipelined(dev, op: str, request: int, total: int, depth: int) -> float:
    """Seconds to move ``total`` bytes as ``request``-byte requests, ``depth`` requests in flight."""
    step = dev.info.max_transfer
    data = os.urandom(request)
    inflight: collections.deque = collections.deque()
    t0 = time.perf_counter()
    for off in range(0, total, request):
        parts = []
        for sub in range(0, request, step):
            n = min(step, request - sub)
            parts.append(dev.submit_write(off + sub, data[sub:sub + n]) if op == "write"
                         else dev.submit_read(off + sub, n))
        inflight.append(parts)
        while len(inflight) >= depth:
            for p in inflight.popleft():
                p.result(60)
    while inflight:
        for p in inflight.popleft():
            p.result(60)
    return time.perf_counter() - t0


@pytest.mark.parametrize("board_id", ["emu-uart-3m", "emu-usb-fs"])
@pytest.mark.parametrize("request_size", [4096, 65536])
def test_serial_throughput_vs_link_ceiling(benchmark, report, board_id, request_size):
    board = load_board(board_id)
    ceiling = board.link_rate  # payload bytes/s the link carries at best
    total = max(8 * request_size, int(ceiling * 1.2)) // request_size * request_size
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "link")
        # the board runs in its own process, as real hardware would: no GIL shared with the host
        emu = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", board_id, "--link", link,
                                "--storage", f"ram://?size={4 * total}&block={board.block_size}"],
                               stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(link):
                assert emu.poll() is None and time.monotonic() < deadline, "emulator did not start"
                time.sleep(0.05)
            dev = open_device(f"board://{board_id}?port={link}")
            depth = max(2, dev.window * dev.info.max_transfer // request_size)
            try:
                pipelined(dev, "write", request_size, 4 * request_size, depth)  # warm up
                t_write = pipelined(dev, "write", request_size, total, depth)
                t_read = pipelined(dev, "read", request_size, total, depth)
                benchmark.pedantic(lambda: dev.read(0, request_size), rounds=3, iterations=1)
                retransmits = dev.stats["retransmits"]
            finally:
                dev.close()
        finally:
            emu.terminate()
            emu.wait(30)
    write_ratio = total / t_write / ceiling
    read_ratio = total / t_read / ceiling
    for what, ratio, t in (("write", write_ratio, t_write), ("read", read_ratio, t_read)):
        report(f"serial {what} {request_size // 1024} KiB requests, {board_id} (pipelined, window {board.window})",
               f"link payload ceiling {ceiling} B/s", ratio, ">= 0.9", bytes=total, seconds=round(t, 3),
               ours_kb_s=round(total / t / 1000, 1), retransmits=retransmits, depth=depth)
