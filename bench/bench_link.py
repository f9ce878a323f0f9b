"""Device links between two real `splitpoint serve` processes on loopback, against peers in the same run.

- Throughput: nbdcopy of 256 MiB (256 KiB requests) into a LUN whose primary backup LUN is a
  ``link://`` to another serve (sync and async), against raw TCP between two processes on the same
  loopback moving the same bytes in 256 KiB writes (socat into /dev/null): goal >= 0.8.
- TRIGGER latency: the control channel's TRIGGER round trip on a LUN mirrored over a sync link,
  against the same on a LUN with only a local pool: goal <= 2x the local cut plus one round trip
  to the far controller (a TCP connect to its listener), reported as ours over that bound.
Nothing is pinned; medians of ROUNDS alternated rounds.
"""
from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import time

import pytest

from bench.timing import free_port
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient

ROUNDS = int(os.environ.get("SPLITPOINT_BENCH_ROUNDS", "5"))
SIZE = 256 << 20

pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in ("nbdcopy", "nbdkit", "socat")),
                                reason="nbdcopy, nbdkit and socat are needed (make bench installs them)")


def far_server(tmp_path, name: str) -> tuple[ServerProcess, str]:
    cfg = tmp_path / f"{name}.toml"
    members = ", ".join(f'"ram://{name}{i}?size={SIZE}"' for i in range(2))
    cfg.write_text(f'[device]\nlisten = "127.0.0.1:0"\n[[lun]]\nname = "lun0"\nurl = "ram://{name}?size={SIZE}"\n'
                   f'[lun.pool]\nmembers = [{members}]\n')
    server = ServerProcess(str(tmp_path / name), config=str(cfg)).start()
    line = next(x for x in server.output if x.startswith("device links: "))
    return server, line.split()[2].removesuffix("/<lun>") + "/lun0"


def near_server(tmp_path, name: str, link: str | None, mirror: str = "sync") -> ServerProcess:
    cfg = tmp_path / f"{name}.toml"
    text = (f'[[lun]]\nname = "lun0"\nurl = "ram://{name}?size={SIZE}"\n'
            f'[lun.pool]\nmembers = ["ram://{name}a?size={SIZE}", "ram://{name}b?size={SIZE}"]\n')
    if link:
        text += f'[lun.backup]\nurl = "{link}"\nmirror = "{mirror}"\n'
    cfg.write_text(text)
    return ServerProcess(str(tmp_path / name), config=str(cfg)).start()


def nbdcopy_in(server: ServerProcess, source: str) -> float:
    start = time.perf_counter()
    subprocess.run(["nbdcopy", "--flush", "--request-size=262144", source, server.uri("lun0")], check=True,
                   capture_output=True, timeout=600)
    return time.perf_counter() - start


def raw_tcp(source: str) -> float:
    """The same bytes between two processes over loopback TCP, in 256 KiB writes, nothing else."""
    port = free_port()
    sink = subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},reuseaddr", "OPEN:/dev/null"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        with open(source, "rb") as fh, conn:
            start = time.perf_counter()
            while True:
                chunk = fh.read(256 << 10)
                if not chunk:
                    break
                conn.sendall(chunk)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)
            took = time.perf_counter() - start
        sink.wait(timeout=30)
        return took
    finally:
        if sink.poll() is None:
            sink.kill()


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    path = tmp_path_factory.mktemp("payload") / "random.img"
    with open(path, "wb") as fh:
        fh.write(os.urandom(SIZE))
    return str(path)


@pytest.mark.parametrize("mirror", ["sync", "async"])
def test_link_throughput_vs_raw_tcp(report, tmp_path, payload, mirror):
    far, link = far_server(tmp_path, "far")
    near = near_server(tmp_path, "near", link, mirror)
    times = {"link": [], "raw_tcp": []}
    try:
        for i in range(ROUNDS):
            for name in (("link", "raw_tcp") if i % 2 == 0 else ("raw_tcp", "link")):
                times[name].append(nbdcopy_in(near, payload) if name == "link" else raw_tcp(payload))
    finally:
        near.stop()
        far.stop()
    ours, peer = statistics.median(times["link"]), statistics.median(times["raw_tcp"])
    report(f"device link throughput, 256 KiB writes, {mirror} ({SIZE >> 20} MiB nbdcopy --flush)",
           "raw TCP between two processes (socat sink)", peer / ours, ">= 0.8",
           link_mb_s=round(SIZE / ours / 1e6, 1), raw_tcp_mb_s=round(SIZE / peer / 1e6, 1),
           rounds={k: [round(t, 3) for t in v] for k, v in times.items()})


def test_trigger_latency_over_a_link_vs_local(report, tmp_path):
    far, link = far_server(tmp_path, "far")
    linked = near_server(tmp_path, "linked", link, "sync")
    local = near_server(tmp_path, "local", None)
    got = {"link": [], "local": []}
    try:
        with ControlClient(linked.control, 30) as c_link, ControlClient(local.control, 30) as c_local:
            for i in range(ROUNDS * 20):
                for name, ctl in (("link", c_link), ("local", c_local)) if i % 2 == 0 else \
                        (("local", c_local), ("link", c_link)):
                    start = time.perf_counter()
                    answer = ctl.ask("TRIGGER bench")
                    got[name].append(time.perf_counter() - start)
                    assert answer.startswith("OK "), answer
        # one round trip to the far controller: a TCP connect to its device-listen port and back
        host, port = link[len("link://"):].split("/", 1)[0].rsplit(":", 1)
        rtt = []
        for _ in range(200):
            start = time.perf_counter()
            socket.create_connection((host, int(port))).close()
            rtt.append(time.perf_counter() - start)
    finally:
        linked.stop()
        local.stop()
        far.stop()
    ours, peer, trip = statistics.median(got["link"]), statistics.median(got["local"]), statistics.median(rtt)
    # the goal is "at most 2x the local cut plus one round trip": the ratio is ours over that bound
    report("TRIGGER latency over a sync device link vs 2 x a local cut + one round trip (p50)",
           "the same TRIGGER without the link", ours / (2 * peer + trip), "<= 1.0",
           link_p50_us=round(ours * 1e6), local_p50_us=round(peer * 1e6), round_trip_us=round(trip * 1e6),
           link_over_local=round(ours / peer, 2),
           link_p99_us=round(sorted(got["link"])[int(0.99 * len(got["link"]))] * 1e6))
