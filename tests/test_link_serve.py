"""Device links between two real `splitpoint serve` processes on loopback.

The primary's LUN has a local pool and a primary backup LUN on the far controller
(``[lun.backup] url = "link://..."``), which has its own pool (a remote primary backup LUN
with a remote pool). A TRIGGER on the primary crosses the link as a frame in sequence with
the writes and the far controller cuts its own backup there: each far ``lun0.t<id>``, read
with nbdcopy, must be exactly a replay of the writes before the cut.
"""
from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from nbd_raw import ERR, TF, RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient

pytestmark = pytest.mark.xdist_group("link")

SIZE = 4 << 20
BLOCK = 4096


def far_config(workdir: str, members: int = 3) -> str:
    urls = ", ".join(f'"ram://far{i}?size={SIZE}"' for i in range(members))
    path = os.path.join(workdir, "far.toml")
    with open(path, "w") as fh:
        fh.write(f'[device]\nlisten = "127.0.0.1:0"\n\n[[lun]]\nname = "lun0"\nurl = "ram://far?size={SIZE}"\n\n'
                 f'[lun.pool]\nmembers = [{urls}]\n')
    return path


def near_config(workdir: str, link: str, mirror: str = "sync") -> str:
    path = os.path.join(workdir, "near.toml")
    with open(path, "w") as fh:
        fh.write(f'[[lun]]\nname = "lun0"\nurl = "ram://near?size={SIZE}"\n\n'
                 f'[lun.pool]\nmembers = ["ram://n0?size={SIZE}", "ram://n1?size={SIZE}"]\n\n'
                 f'[lun.backup]\nurl = "{link}"\nmirror = "{mirror}"\n')
    return path


def link_endpoint(server: ServerProcess) -> str:
    line = next(x for x in server.output if x.startswith("device links: "))
    return line.split()[2].removesuffix("/<lun>")


class Proxy:
    """A TCP proxy in front of the far side's --device-listen that the test can cut."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.accepted = 0
        self.refuse = False   # True: the far side is unreachable (every new connection is closed at once)
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            if self.refuse:
                down.close()
                continue
            try:
                up = socket.create_connection(self.upstream)
            except OSError:   # the far side is down (restarting): so is this connection
                down.close()
                continue
            with self.lock:
                self.pairs.append((down, up))
                self.accepted += 1
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Drop every connection at once, mid-stream (frames in flight either way are lost)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.sock.close()
        self.cut()


class Writer(threading.Thread):
    """One write in flight at a time, each 4 KiB block a unique pattern, at random (overlapping) blocks."""

    def __init__(self, socket_path: str, blocks: int = 64, seed: int = 1, pace: float = 0.0):
        super().__init__(daemon=True)
        self.client = RawClient(socket_path).connect("lun0")
        self.rng = random.Random(seed)
        self.blocks = blocks
        self.pace = pace     # seconds between writes (an async link must keep up, or its cuts are missed)
        self.log: list[tuple[int, bytes]] = []
        self.acked = 0       # writes acknowledged
        self.started = 0     # writes sent
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            while not self.stop.is_set():
                n = len(self.log)
                offset = self.rng.randrange(self.blocks) * BLOCK
                data = struct.pack("<Q", n + 1) * (BLOCK // 8)
                self.log.append((offset, data))
                self.started = n + 1
                self.client.write(offset, data)
                self.acked = n + 1
                if self.pace:
                    time.sleep(self.pace)
        except BaseException as exc:   # reported by the test
            self.error = exc

    def image(self, k: int) -> bytearray:
        img = bytearray(SIZE)
        for offset, data in self.log[:k]:
            img[offset:offset + len(data)] = data
        return img


def nbdcopy(server: ServerProcess, export: str, timeout: float = 20.0) -> bytes:
    """The bytes of ``export`` through nbdcopy, once the server exports it (a cut still completing is not)."""
    deadline = time.monotonic() + timeout
    while True:
        got = subprocess.run(["nbdcopy", server.uri(export), "-"], capture_output=True, timeout=60)
        if got.returncode == 0 and len(got.stdout) == SIZE:
            return got.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"{export}: {got.stderr.decode()[-500:]}")
        time.sleep(0.05)


def matching_prefix(writer: Writer, got: bytes, lo: int, hi: int) -> int | None:
    """The k in [lo, hi] with ``got`` == the replay of the first k writes, or None."""
    img = writer.image(lo)
    for k in range(lo, hi + 1):
        if k > lo:
            offset, data = writer.log[k - 1]
            img[offset:offset + len(data)] = data
        if img == got:
            return k
    return None


@pytest.fixture
def pair(tmp_path):
    """(near, far, proxy): two serve processes, the near one's primary backup LUN a link through a proxy."""
    started = []

    def start(mirror="sync", proxy=True, options="rto=0.05"):
        far = ServerProcess(str(tmp_path / "far"), config=far_config(str(tmp_path)))
        far.start()
        started.append(far)
        endpoint = link_endpoint(far)
        host, port = endpoint.removeprefix("link://").rsplit(":", 1)
        px = Proxy((host, int(port))) if proxy else None
        target = f"127.0.0.1:{px.port}" if px else f"{host}:{port}"
        near = ServerProcess(str(tmp_path / "near"),
                             config=near_config(str(tmp_path), f"link://{target}/lun0?{options}", mirror))
        near.start()
        started.append(near)
        return near, far, px

    yield start
    for server in reversed(started):
        server.stop()


def far_status(far: ServerProcess) -> dict:
    return ControlClient(far.control).status()


def run_triggers(near, far, writer: Writer, count: int, cut=None):
    control = ControlClient(near.control)
    checked = 0
    for i in range(count):
        time.sleep(0.01)
        lo = writer.acked
        answer = control.ask(f"TRIGGER t{i}")
        hi = writer.started
        assert answer.startswith("OK "), answer
        tid = int(answer.split()[1])
        got = nbdcopy(far, f"lun0.t{tid}")
        k = matching_prefix(writer, got, lo, hi)
        assert k is not None, f"far lun0.t{tid} is not a replay of the writes before its cut ({lo}..{hi})"
        checked += 1
        if cut is not None and i % 5 == 2:
            cut()
    return checked


@pytest.mark.parametrize("mirror,count", [("sync", 50), ("async", 50),
                                          pytest.param("sync", 500, marks=pytest.mark.slow),
                                          pytest.param("async", 500, marks=pytest.mark.slow)])
def test_far_pool_rotates_at_each_primary_trigger(pair, mirror, count):
    near, far, _px = pair(mirror, proxy=False)
    writer = Writer(near.socket, pace=0.002 if mirror == "async" else 0.0)
    writer.start()
    try:
        assert run_triggers(near, far, writer, count) == count
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    st = far_status(far)
    pool = st["luns"][0]["pools"][0]
    assert pool["rotations"] == count
    link = st["device_links"]["luns"][0]
    assert link["cuts"] == count and link["missed"] == []
    # the origin and the label crossed the link with the TRIGGER
    listing = subprocess.run(["nbdinfo", "--list", f"nbd+unix:///?socket={far.socket}"], capture_output=True,
                             text=True, timeout=30).stdout
    assert f"label 't{count - 1}'" in listing and f"t{count}, read-only" in listing


def test_tcp_drops_lose_nothing_and_apply_nothing_twice(pair):
    near, far, px = pair()
    writer = Writer(near.socket, blocks=16)   # few blocks: a write applied twice or late would show
    writer.start()
    try:
        assert run_triggers(near, far, writer, 20, cut=px.cut) == 20
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    assert px.accepted >= 4   # the link reconnected after each cut
    link = far_status(far)["device_links"]["luns"][0]
    assert link["connections"] >= 4 and link["missed"] == []
    # after the last write: the far LUN is the primary, byte for byte
    tid = int(ControlClient(near.control).ask("TRIGGER last").split()[1])
    near_bytes = RawClient(near.socket).connect("lun0").read(0, SIZE)
    assert nbdcopy(far, f"lun0.t{tid}") == near_bytes == bytes(writer.image(len(writer.log)))


def test_hosts_cannot_write_a_link_fed_lun(pair):
    near, far, _px = pair(proxy=False)
    RawClient(near.socket).connect("lun0").write(0, b"\x07" * BLOCK)
    client = RawClient(far.socket).connect("lun0")
    assert client.tflags & TF["READ_ONLY"]
    assert client.do("WRITE", 0, payload=b"\x01" * BLOCK).error == ERR["EPERM"]
    assert client.do("TRIM", 0, BLOCK).error == ERR["EPERM"]
    assert client.read(0, BLOCK) == b"\x07" * BLOCK   # reads work, and see the link's writes
    doc = json.loads(json.dumps(far_status(far)))
    assert doc["device_links"]["luns"][0]["lun"] == "lun0"
    table = subprocess.run([sys.executable, "-m", "splitpoint", "status", "--control", far.control],
                           capture_output=True, text=True, timeout=60).stdout
    assert "link into lun0 from " in table and ": connected, 0 cut(s), 0 missed" in table
    table = subprocess.run([sys.executable, "-m", "splitpoint", "status", "--control", near.control],
                           capture_output=True, text=True, timeout=60).stdout
    assert "primary backup LUN lun0.backup: " in table and f"{link_endpoint(far)}/lun0" in table


def test_a_link_as_pool_member_cuts_the_far_pool_when_the_member_is_cut(tmp_path):
    far = ServerProcess(str(tmp_path / "far"), config=far_config(str(tmp_path))).start()
    near = None
    try:
        link = f"{link_endpoint(far)}/lun0?rto=0.05"
        path = tmp_path / "near-pool.toml"
        path.write_text(f'[[lun]]\nname = "lun0"\nurl = "ram://near?size={SIZE}"\n\n'
                        f'[lun.pool]\nmembers = ["{link}", "ram://n1?size={SIZE}", "ram://n2?size={SIZE}"]\n')
        near = ServerProcess(str(tmp_path / "near"), config=str(path)).start()
        control = ControlClient(near.control)
        RawClient(near.socket).connect("lun0").write(0, b"\x11" * BLOCK)
        deadline = time.monotonic() + 30
        while control.status()["luns"][0]["pools"][0]["members"][0]["state"] != "active":   # resynced over the link
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert control.ask("TRIGGER first").startswith("OK 1 ")   # cuts the link member: the far pool rotates
        RawClient(near.socket).connect("lun0").write(0, b"\x22" * BLOCK)
        assert control.ask("TRIGGER second").startswith("OK 2 ")  # cuts a RAM member: nothing crosses
        expected = bytearray(SIZE)
        expected[:BLOCK] = b"\x11" * BLOCK
        assert nbdcopy(near, "lun0.t1") == nbdcopy(far, "lun0.t1") == bytes(expected)
        link_doc = far_status(far)["device_links"]["luns"][0]
        assert link_doc["cuts"] == 1 and link_doc["missed"] == []
    finally:
        if near is not None:
            near.stop()
        far.stop()


def test_three_controllers_in_a_chain_cut_both_far_pools_in_sequence(tmp_path):
    """primary -> middle (its LUN fed by a link, with its own pool and its own link onward) -> far."""
    far = ServerProcess(str(tmp_path / "far"), config=far_config(str(tmp_path))).start()
    servers = [far]
    try:
        mid_path = tmp_path / "mid.toml"
        mid_path.write_text(f'[device]\nlisten = "127.0.0.1:0"\n\n[[lun]]\nname = "lun0"\nurl = "ram://m?size={SIZE}"\n\n'
                            f'[lun.pool]\nmembers = ["ram://m0?size={SIZE}", "ram://m1?size={SIZE}"]\n\n'
                            f'[lun.backup]\nurl = "{link_endpoint(far)}/lun0?origin=middle"\n')
        mid = ServerProcess(str(tmp_path / "mid"), config=str(mid_path)).start()
        servers.append(mid)
        near = ServerProcess(str(tmp_path / "near"), config=near_config(
            str(tmp_path), f"{link_endpoint(mid)}/lun0?origin=primary")).start()
        servers.append(near)
        writer = Writer(near.socket, blocks=32)
        writer.start()
        control = ControlClient(near.control)
        try:
            for i in range(10):
                time.sleep(0.01)
                lo = writer.acked
                tid = int(control.ask(f"TRIGGER chain{i}").split()[1])
                hi = writer.started
                for server in (mid, far):
                    got = nbdcopy(server, f"lun0.t{tid}")
                    assert matching_prefix(writer, got, lo, hi) is not None, f"{server.workdir} t{tid}"
        finally:
            writer.stop.set()
            writer.join(10)
        assert writer.error is None, writer.error
        listing = subprocess.run(["nbdinfo", "--list", f"nbd+unix:///?socket={far.socket}"], capture_output=True,
                                 text=True, timeout=30).stdout
        assert "label 'chain9'" in listing and "from middle t10" in listing
        listing = subprocess.run(["nbdinfo", "--list", f"nbd+unix:///?socket={mid.socket}"], capture_output=True,
                                 text=True, timeout=30).stdout
        assert "from primary t10" in listing
    finally:
        for server in reversed(servers):
            server.stop()
