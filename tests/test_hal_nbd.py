"""`nbd://` devices: LUNs and pool members on NBD servers a user already runs (nbdkit, qemu-nbd).

Real servers, started per test and stopped by pid; the device speaks to them through libnbd.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.hal import BadURLError, DeviceGoneError, MisalignedError, OutOfRangeError, ReadOnlyError, open_device

MiB = 1 << 20


def _wait_pid(pidfile, timeout=10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = open(pidfile).read().strip()
            if text:
                return int(text)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"server did not write {pidfile}")


class Servers:
    """NBD servers of one test; each is stopped by its pid at the end."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.pids: list[int] = []
        self.n = 0

    def nbdkit(self, *plugin, read_only=False, sock=None, port=None) -> str:
        """Start ``nbdkit PLUGIN...``; returns the URL of its export (Unix socket unless ``port``)."""
        self.n += 1
        pidfile = self.tmp / f"nbdkit{self.n}.pid"
        where = ["-i", "127.0.0.1", "-p", str(port)] if port else ["-U", sock or str(self.tmp / f"k{self.n}.sock")]
        subprocess.run(["nbdkit", *where, "-P", str(pidfile), *(["-r"] if read_only else []), *plugin], check=True)
        self.pids.append(_wait_pid(pidfile))
        return f"nbd://127.0.0.1:{port}/" if port else f"nbd+unix:///?socket={where[1]}"

    def qemu_nbd(self, image) -> str:
        self.n += 1
        sock, pidfile = self.tmp / f"q{self.n}.sock", self.tmp / f"q{self.n}.pid"
        subprocess.run(["qemu-nbd", "--fork", "-k", str(sock), "--pid-file", str(pidfile), "-f", "raw",
                        "--cache=none", str(image)], check=True)
        self.pids.append(_wait_pid(pidfile))
        return f"nbd+unix:///?socket={sock}"

    def kill(self, pid) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def stop(self) -> None:
        for pid in self.pids:
            self.kill(pid)


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path)
    yield s
    s.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_contract_on_nbdkit_memory(servers):
    dev = open_device(servers.nbdkit("memory", "4M") + "&block=4096")
    try:
        assert (dev.size, dev.block_size, dev.read_only, dev.persistent) == (4 * MiB, 4096, False, True)
        data = random.Random(1).randbytes(3 * 4096)
        dev.write(8192, data)
        assert dev.read(8192, len(data)) == data
        buf = bytearray(4096)
        dev.readinto(12288, buf)
        assert bytes(buf) == data[4096:8192]
        dev.write(0, b"\x01" * 4096, fua=True)
        dev.flush()
        dev.trim(8192, 4096)                       # the contract: a trimmed range reads back as zeros
        assert dev.read(8192, 4096) == bytes(4096)
        dev.write_zeroes(12288, 8192)
        assert dev.read(8192, 3 * 4096) == bytes(3 * 4096)
        assert dev.read(0, 4096) == b"\x01" * 4096
        with pytest.raises(OutOfRangeError):
            dev.read(4 * MiB - 4096, 8192)
        with pytest.raises(MisalignedError):
            dev.write(100, b"x" * 4096)
        assert "4194304 bytes, block 4096" in dev.describe()
    finally:
        dev.close()


def test_large_requests_are_split_under_the_servers_maximum(servers):
    dev = open_device(servers.nbdkit("memory", "160M"))
    try:
        data = random.Random(2).randbytes(72 * MiB)   # more than one NBD request may carry
        dev.write(MiB, data)
        assert dev.read(MiB, len(data)) == data
    finally:
        dev.close()


def test_tcp_uri_and_qemu_nbd_on_a_file(servers, tmp_path):
    dev = open_device(servers.nbdkit("memory", "1M", port=_free_port()))
    try:
        dev.write(0, b"t" * 512)
        assert dev.read(0, 512) == b"t" * 512
    finally:
        dev.close()
    image = tmp_path / "q.img"
    image.write_bytes(bytes(MiB))
    dev = open_device(servers.qemu_nbd(image) + "&block=4096")
    try:
        dev.write(4096, b"q" * 4096, fua=True)
    finally:
        dev.close()
    assert image.read_bytes()[4096:8192] == b"q" * 4096


def test_read_only_server_refuses_writes(servers):
    dev = open_device(servers.nbdkit("memory", "1M", read_only=True))
    try:
        assert dev.read_only
        assert dev.read(0, 512) == bytes(512)
        with pytest.raises(ReadOnlyError):
            dev.write(0, b"x" * 512)
    finally:
        dev.close()
    dev = open_device(servers.nbdkit("memory", "1M") + "&readonly=1")
    try:
        with pytest.raises(ReadOnlyError):
            dev.trim(0, 512)
    finally:
        dev.close()


@pytest.mark.parametrize("url, words", [
    ("nbd://127.0.0.1/x?colour=red", "unknown option 'colour'"),
    ("nbd+unix:///x", "needs ?socket=PATH"),
    ("nbd://127.0.0.1/x?block=3000", "not a power of two"),
])
def test_bad_urls_name_the_problem_and_the_grammar(servers, url, words):
    if "block=3000" in url:
        url = servers.nbdkit("memory", "1M") + "&block=3000"
    with pytest.raises(BadURLError) as got:
        open_device(url)
    assert words in str(got.value) and "grammar" in str(got.value)


def test_a_server_that_is_not_there_is_a_clear_error():
    port = _free_port()
    with pytest.raises(DeviceGoneError) as got:
        open_device(f"nbd://127.0.0.1:{port}/lun")
    assert f"cannot connect to nbd://127.0.0.1:{port}/lun" in str(got.value)
    assert "refused" in str(got.value).lower()


def test_a_lost_server_is_link_down_and_a_reconnect_is_a_new_incarnation(servers, tmp_path):
    sock = str(tmp_path / "again.sock")
    url = servers.nbdkit("memory", "1M", sock=sock)
    dev = open_device(url)
    try:
        dev.write(0, b"a" * 512)
        before = dev.incarnation
        servers.kill(servers.pids[-1])
        with pytest.raises(DeviceGoneError):
            dev.write(0, b"b" * 512)
        assert dev.link_down
        with pytest.raises(DeviceGoneError):      # still gone: the reconnect fails, clearly
            dev.read(0, 512)
        os.unlink(sock)
        servers.nbdkit("memory", "1M", sock=sock)
        assert dev.read(0, 512) == bytes(512)     # a new server: other bytes
        assert dev.incarnation == before + 1 and not dev.link_down
        assert dev.link_status()["reconnects"] == 1
    finally:
        dev.close()


def _controller(members: list[str], size: int) -> Controller:
    text = f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
[[lun]]
name = "lun0"
url = "ram://?size={size}&block=4096"
[lun.pool]
members = [{", ".join(f'"{m}&block=4096"' for m in members)}]
"""
    return Controller.from_config(cfgmod.loads(text))


def test_a_pool_of_nbd_members_rotates_cuts_exactly_and_verifies(servers):
    size = MiB
    urls = [servers.nbdkit("memory", str(size)) for _ in range(3)]
    ctl = _controller(urls, size)
    rng = random.Random(7)
    model = bytearray(size)
    cuts = {}
    try:
        for t in range(1, 7):
            ctl.settle()      # the active member's resync done: its cut is a backup at once
            for _ in range(40):
                off = rng.randrange(size // 4096) * 4096
                n = rng.randrange(1, 5) * 4096
                n = min(n, size - off)
                data = rng.randbytes(n)
                ctl.write("lun0", off, data)
                model[off:off + n] = data
            res = ctl.trigger("lun0", f"cut{t}")
            cuts[res.id] = bytes(model)
            # a plain NBD target takes no in-band TRIGGER: the cut is a drain barrier, so another
            # client of the frozen member's server already reads exactly the cut
            frozen = next(b for b in ctl.backups("lun0") if b.trigger_id == res.id)
            index = int(frozen.member.rsplit("[", 1)[1].rstrip("]"))
            other = open_device(urls[index] + "&block=4096")
            try:
                assert other.read(0, size) == cuts[res.id], f"member {index} behind its cut t{res.id}"
            finally:
                other.close()
        ctl.settle()
        kept = ctl.backups("lun0")
        assert len(kept) == 2 and {b.trigger_id for b in kept} == {5, 6}   # rotated: the oldest recycled
        for b in kept:
            assert ctl.read_backup("lun0", b.trigger_id, 0, size) == cuts[b.trigger_id]
        results = ctl.verify("lun0")
        assert results and all(r.ok for r in results), results
        devices = ctl.status()["devices"]
        assert len(devices) == 3 and all(d["link"]["up"] for d in devices)
    finally:
        ctl.close()


def test_a_server_without_write_zeroes_gets_zero_writes(servers):
    dev = open_device(servers.nbdkit("--filter=nozero", "memory", "1M", "zeromode=none"))
    try:
        assert not dev._can_zero
        dev.write(0, b"z" * 8192)
        dev.write_zeroes(0, 4096, fua=True)
        dev.trim(4096, 4096)
        assert dev.read(0, 8192) == bytes(8192)
    finally:
        dev.close()
