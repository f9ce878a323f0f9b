"""The three boards a user can put behind ``board://``, side by side in one run: the Python board
(`splitpoint emulate`), the C firmware's host build (`emulate --cffi`) and the C firmware under
qemu-system-arm (`emulate --qemu`, the lm3s6965evb port with an SD card image).

Each board runs in its own process on ptys, unthrottled (``--rate 0`` for the Python board; the
other two do not model a link rate), with the same board definition (emu-uart-3m), so the host,
the wire protocol and the request pattern are the same and only the board differs. Measured:
pipelined writes and reads of whole max_transfer requests (the window kept full), and the latency
of a TRIGGER frame on the data link (sent in sequence, answered when the board has cut). Ratios
are each C board against the Python board. No goal is set by the issue for these; the rows say
what the C firmware costs or saves, emulated CPU included for QEMU.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import pytest

from splitpoint.hal import open_device

from bench.bench_serial import pipelined

BOARD = "emu-uart-3m"
TOTAL = 1 << 20           # bytes written, then read, per board: within the QEMU port's 2 MiB primary
TRIGGERS = 20
URL_OPTS = "rto=0.3&retries=16"


def _start(kind: str, link: str, tmp: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "splitpoint", "emulate", BOARD, "--link", link]
    if kind == "python":
        cmd += ["--rate", "0", "--storage", "ram://?size=4M&block=512"]
    elif kind == "cffi":
        cmd += ["--cffi"]
    else:
        image = os.path.join(tmp, "sd.img")
        with open(image, "wb") as fh:
            fh.truncate(16 << 20)
        cmd += ["--qemu", "--storage", image]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.lexists(link):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"the {kind} board did not start ({' '.join(cmd)})")
        time.sleep(0.05)
    time.sleep(0.3)   # QEMU links its ptys before the firmware has booted; the PING retries cover the rest
    return proc


def _measure(kind: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "board")
        proc = _start(kind, link, tmp)
        try:
            with open_device(f"board://{BOARD}?port={link}&{URL_OPTS}") as dev:
                step = dev.info.max_transfer
                total = min(TOTAL, dev.size) // step * step
                depth = max(2, dev.window)
                pipelined(dev, "write", step, 8 * step, depth)     # warm up
                t_write = pipelined(dev, "write", step, total, depth)
                t_read = pipelined(dev, "read", step, total, depth)
                lat = []
                for i in range(TRIGGERS):
                    t0 = time.perf_counter()
                    dev.trigger(i + 1, f"bench {i + 1}")
                    lat.append(time.perf_counter() - t0)
                    dev.write(0, os.urandom(step))
                return {"write_mb_s": total / t_write / 1e6, "read_mb_s": total / t_read / 1e6,
                        "trigger_p50_us": statistics.median(lat) * 1e6, "trigger_max_us": max(lat) * 1e6,
                        "bytes": total, "request": step, "depth": depth, "retransmits": dev.stats["retransmits"]}
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_c_boards_against_the_python_board(report):
    got = {kind: _measure(kind) for kind in ("python", "cffi", "qemu")}
    py = got["python"]
    for kind in ("cffi", "qemu"):
        c = got[kind]
        for what in ("write", "read"):
            report(f"{kind} board {what} MB/s, {c['request'] // 1024} KiB requests, window {c['depth']}",
                   "the Python board, same run", c[f"{what}_mb_s"] / py[f"{what}_mb_s"], ">= 1.0",
                   ours_mb_s=round(c[f"{what}_mb_s"], 2), python_mb_s=round(py[f"{what}_mb_s"], 2),
                   bytes=c["bytes"], retransmits=c["retransmits"])
        report(f"{kind} board TRIGGER frame latency p50", "the Python board, same run",
               c["trigger_p50_us"] / py["trigger_p50_us"], "<= 1.0",
               ours_us=round(c["trigger_p50_us"]), python_us=round(py["trigger_p50_us"]),
               ours_max_us=round(c["trigger_max_us"]), python_max_us=round(py["trigger_max_us"]))
