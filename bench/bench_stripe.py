"""A striped LUN over two device processes against the same LUN on one device, in one run.

The near `splitpoint serve` has LUN ``lun0``: either ``layout = "stripe"`` (64 KiB units) over two
``link://`` parts on two far `splitpoint serve --device-listen` processes, or ``url = link://``
to one far process. fio (``ioengine=nbd``) writes 64 MiB sequentially in 256 KiB requests at
QD8. Reported: MB/s of each and their ratio (striped / one device), and server CPU per request
(user+system of every serve process, from /proc). No goal: on a 2-core machine the figure shows
what the stripe costs. Medians of ROUNDS alternated rounds.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time

import pytest

from splitpoint.demo import ServerProcess

ROUNDS = int(os.environ.get("SPLITPOINT_BENCH_ROUNDS", "3"))
PART = 64 << 20
MOVE = 64 << 20
REQ = 256 << 10

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is needed")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def far(tmp_path, name: str) -> tuple[ServerProcess, str]:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'[device]\nlisten = "127.0.0.1:0"\n[[lun]]\nname = "{name}"\nurl = "ram://{name}?size={PART}"\n')
    server = ServerProcess(str(tmp_path / name), config=str(cfg)).start()
    line = next(x for x in server.output if x.startswith("device links: "))
    return server, line.split()[2].removesuffix("/<lun>") + f"/{name}"


def run(tmp_path, name: str, lun_table: str, fars) -> dict:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(f'[[lun]]\nname = "lun0"\n{lun_table}')
    near = ServerProcess(str(tmp_path / name), config=str(cfg)).start()
    try:
        pids = [near.pid] + [f.pid for f in fars]
        before = sum(cpu_seconds(p) for p in pids)
        start = time.perf_counter()
        subprocess.run(["fio", "--name=w", "--ioengine=nbd", f"--uri={near.uri('lun0')}", "--rw=write",
                        f"--bs={REQ}", "--iodepth=8", f"--size={MOVE}", "--output-format=terse"],
                       check=True, capture_output=True, timeout=600)
        took = time.perf_counter() - start
        cpu = sum(cpu_seconds(p) for p in pids) - before
    finally:
        near.stop()
    return {"mbps": MOVE / took / 1e6, "cpu_us": cpu / (MOVE // REQ) * 1e6}


def test_striped_lun_over_two_devices_vs_one(tmp_path):
    for d in ("p0", "p1", "one", "s", "f"):
        os.makedirs(tmp_path / d, exist_ok=True)
    fars = [far(tmp_path, "p0"), far(tmp_path, "p1")]
    try:
        striped_table = (f'layout = "stripe"\nstripe = "64K"\nparts = ["{fars[0][1]}", "{fars[1][1]}"]\n')
        single_table = f'url = "{fars[0][1]}"\n'
        results = {"striped": [], "one": []}
        for r in range(ROUNDS):
            results["striped"].append(run(tmp_path / "s", f"s{r}", striped_table, [f for f, _ in fars]))
            results["one"].append(run(tmp_path / "f", f"f{r}", single_table, [fars[0][0]]))
    finally:
        for server, _ in fars:
            server.stop()
    med = {k: {m: statistics.median(x[m] for x in v) for m in ("mbps", "cpu_us")} for k, v in results.items()}
    print(f"\nstriped over 2 devices: {med['striped']['mbps']:.1f} MB/s, {med['striped']['cpu_us']:.0f} us CPU/request")
    print(f"one device:             {med['one']['mbps']:.1f} MB/s, {med['one']['cpu_us']:.0f} us CPU/request")
    print(f"ratio striped/one: {med['striped']['mbps'] / med['one']['mbps']:.2f}  (rounds: {ROUNDS}; "
          f"all: {results})")
