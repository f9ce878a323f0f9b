"""What one NBD client may take from the others: memory (requests in flight and replies it does not
read, per client and in total) and time (a handshake that never finishes).

The memory test drives a real `splitpoint serve` with a raw client that pipelines 1,000 READs of
4 MiB and never reads a reply, measures the server's peak RSS (VmHWM) and has qemu-io served
beside it. The budget rules themselves are checked in-process against transports that fill up
like a socket whose peer does not read, so every step is deterministic.
"""
from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess
import sys

import pytest

from nbd_raw import RawClient
from splitpoint import config
from splitpoint.demo import ServerProcess
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import Op

MiB = 1 << 20
LUN_SIZE = 64 * MiB
SERVE_CONFIG = f"""
[[lun]]
name = "lun0"
url = "ram://lun0?size={LUN_SIZE}"
[lun.pool]
members = ["ram://b0?size={LUN_SIZE}", "ram://b1?size={LUN_SIZE}"]
"""
#: the server's peak RSS must stay below this with one client stalled on 4 GiB of replies
RSS_LIMIT = 400 * MiB


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def _read_requests(count: int, length: int, size: int) -> bytes:
    """``count`` READ requests of ``length`` bytes, cookies 1.., offsets cycling through ``size``."""
    slots = size // length
    return b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i + 1, (i % slots) * length, length)
                    for i in range(count))


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(*args, extra=""):
        cfg = tmp_path / f"sp{len(servers)}.toml"
        cfg.write_text(SERVE_CONFIG + extra)
        s = ServerProcess(str(tmp_path / f"s{len(servers)}"), config=str(cfg), extra_args=args).start()
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


def test_a_client_that_does_not_read_its_replies_cannot_take_the_memory(serve):
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed (make test installs it)")
    server = serve()
    baseline = _status_kib(server.pid, "VmRSS") * 1024
    staller = RawClient(server.socket)
    staller.connect("lun0")
    staller.pending.update({i + 1: (0, 4 * MiB) for i in range(1000)})
    staller.send(_read_requests(1000, 4 * MiB, LUN_SIZE))   # 28 KB of requests, 4 GiB of replies, never read
    # Another client is served beside it; its requests queue behind whatever the staller got admitted.
    got = subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 1M", "-c", "read -P 0x5a 1M 1M",
                          server.uri("lun0")], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and "Pattern verification failed" not in got.stdout, got.stdout + got.stderr
    peak = _status_kib(server.pid, "VmHWM") * 1024
    print(f"server RSS: {baseline / MiB:.0f} MiB at start, peak {peak / MiB:.0f} MiB with a stalled client")
    assert peak < RSS_LIMIT, f"peak RSS {peak / MiB:.0f} MiB (from {baseline / MiB:.0f} MiB)"
    # the stalled client is served again once it reads (all of it: see the in-process tests below)
    staller.sock.settimeout(60)
    for _ in range(32):
        reply = staller.reply()
        assert reply.error == 0 and len(reply.data) == 4 * MiB
    staller.close()


def test_handshakes_that_never_finish_are_closed_after_the_timeout(serve):
    server = serve("--handshake-timeout", "2")
    silent = RawClient(server.socket)                   # connects, sends nothing
    half = RawClient(server.socket)
    half.start()
    half.send(struct.pack(">QI", 0x49484156454F5054, 7))  # 12 of an option's 16 header bytes
    ready = RawClient(server.socket).connect("lun0")      # finishes its handshake, then idles
    assert silent.is_closed(timeout=30) and half.is_closed(timeout=30)
    assert not ready.is_closed(timeout=1)               # idle past the timeout: it ended with the handshake
    ready.write(0, b"\x11" * 4096)
    assert ready.read(0, 4096) == b"\x11" * 4096
    assert server.log().count("handshake not finished within 2 s") == 2
    for c in (silent, half, ready):
        c.close()


def test_the_configuration_sets_the_handshake_timeout_and_the_flag_overrides_it(serve):
    from_config = serve(extra="[nbd]\nhandshake_timeout = 1\n")
    overridden = serve("--handshake-timeout", "0", extra="[nbd]\nhandshake_timeout = 1\n")
    a, b = RawClient(from_config.socket), RawClient(overridden.socket)
    assert a.is_closed(timeout=30)
    assert not b.is_closed(timeout=1.5)                  # 0: no limit
    assert "handshake not finished within 1 s" in from_config.log()
    a.close()
    b.close()


# --- the budget rules, in-process -----------------------------------------------------------------
class _SocketLike:
    """A transport whose buffer fills like a socket's when its peer does not read."""

    HIGH = 256 << 10

    def __init__(self, protocol):
        self.protocol = protocol
        self.out = bytearray()
        self.reading = True
        self.full = False
        self.closed = False

    def write(self, data):
        self.out += data
        if not self.full and len(self.out) > self.HIGH:
            self.full = True
            self.protocol.pause_writing()

    def drain(self) -> bytes:
        """The peer reads everything written so far."""
        data, self.out = bytes(self.out), bytearray()
        if self.full:
            self.full = False
            self.protocol.resume_writing()
        return data

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True

    def close(self):
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(None)

    def is_closing(self):
        return self.closed


def _replies(data: bytes) -> dict[int, bytes]:
    """cookie -> payload of the simple READ replies in ``data`` (all of them 1 MiB)."""
    out, pos = {}, 0
    while pos < len(data):
        magic, error, cookie = struct.unpack_from(">IIQ", data, pos)
        assert magic == 0x67446698 and error == 0
        out[cookie] = data[pos + 16:pos + 16 + MiB]
        pos += 16 + MiB
    return out


async def _settle(fe, turns=30):
    for _ in range(turns):
        fe._tick()
        await asyncio.sleep(0)


def _frontend_scenario(body, **budget):
    from splitpoint.firmware.frontend.nbd import NbdConnection
    from splitpoint.firmware.frontend.service import FrontEnd

    async def scenario():
        ctl = Controller.from_config(config.loads(SERVE_CONFIG))
        lun = ctl.luns["lun0"]
        for i in range(LUN_SIZE // MiB):          # every MiB of the LUN holds its own number
            ctl.submit(lun, Op.WRITE, i * MiB, MiB, bytes([i]) * MiB)
        ctl.poll(1024)
        fe = FrontEnd(ctl, **budget)

        def connect():
            conn = NbdConnection(fe)
            transport = _SocketLike(conn)
            conn.connection_made(transport)
            conn.data_received(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, 10)
                               + struct.pack(">I", 4) + b"lun0" + b"\0\0")
            transport.drain()                     # greeting and option replies
            return conn, transport
        try:
            await body(fe, connect)
        finally:
            ctl.close()
    asyncio.run(scenario())


def _check(replies: dict[int, bytes], count: int):
    assert set(replies) == set(range(1, count + 1))
    for cookie, data in replies.items():
        assert data == bytes([(cookie - 1) % (LUN_SIZE // MiB)]) * MiB


def test_a_client_holds_at_most_its_budget_and_gets_everything_once_it_reads():
    async def body(fe, connect):
        conn, transport = connect()
        conn.data_received(_read_requests(40, MiB, LUN_SIZE))
        await _settle(fe)
        assert not transport.reading and fe.held <= 8 * MiB + 40 * 16
        assert len(transport.out) <= 8 * (MiB + 16)      # no more than the budget was read
        replies = {}
        while len(replies) < 40:
            replies.update(_replies(transport.drain()))
            await _settle(fe)
        _check(replies, 40)
        assert fe.held == 0 and transport.reading
    _frontend_scenario(body, client_bytes=8 * MiB, total_bytes=64 * MiB)


def test_the_total_budget_holds_and_frees_when_a_stalled_client_leaves():
    async def body(fe, connect):
        (a, ta), (b, tb), (c, tc) = connect(), connect(), connect()
        for conn in (a, b, c):
            conn.data_received(_read_requests(20, MiB, LUN_SIZE))
            await _settle(fe)
        assert fe.held <= 16 * MiB + 40 * 16
        assert tc.out == b"" and not tc.reading           # nothing left for the third client
        ta.close()                                        # the first one goes away
        await _settle(fe)
        replies = {}
        while len(replies) < 20:
            replies.update(_replies(tc.drain()))
            await _settle(fe)
        _check(replies, 20)
        assert fe.held <= 8 * MiB + 20 * 16               # b still holds what it was given
    _frontend_scenario(body, client_bytes=8 * MiB, total_bytes=16 * MiB)


def test_a_large_write_is_received_only_once_it_fits():
    async def body(fe, connect):
        (a, ta), (b, tb), (c, tc) = connect(), connect(), connect()
        for conn in (a, b):                                       # two stalled clients hold the total
            conn.data_received(_read_requests(8, MiB, LUN_SIZE))
            await _settle(fe)
        c.data_received(struct.pack(">IHHQQI", 0x25609513, 0, 1, 99, 0, 4 * MiB))   # a WRITE's header
        await _settle(fe)
        assert not tc.reading and tc.out == b""                   # its 4 MiB payload waits in the socket
        assert len(_replies(ta.drain())) == 8
        await _settle(fe)
        assert tc.reading
        c.data_received(b"\x77" * (4 * MiB))
        await _settle(fe)
        magic, error, cookie = struct.unpack(">IIQ", tc.drain())
        assert (magic, error, cookie) == (0x67446698, 0, 99)
        assert fe.ctl.read(fe.ctl.luns["lun0"], 0, 4 * MiB) == b"\x77" * (4 * MiB)
    _frontend_scenario(body, client_bytes=8 * MiB, total_bytes=16 * MiB)


def test_a_single_request_larger_than_the_budget_is_still_served():
    async def body(fe, connect):
        conn, transport = connect()
        conn.data_received(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 64 * MiB))
        await _settle(fe)
        data = transport.drain()
        magic, error, cookie = struct.unpack_from(">IIQ", data)
        assert (magic, error, cookie) == (0x67446698, 0, 7) and len(data) == 16 + 64 * MiB
        assert data[16:16 + MiB] == bytes(MiB) and data[-MiB:] == b"\x3f" * MiB
        await _settle(fe)
        assert fe.held == 0
    _frontend_scenario(body, client_bytes=8 * MiB, total_bytes=16 * MiB)


def test_a_client_reusing_a_cookie_cannot_release_more_than_it_was_charged():
    async def body(fe, connect):
        conn, transport = connect()
        same = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, 5, i * MiB, MiB if i % 2 else 512)
                        for i in range(40))
        conn.data_received(same)
        await _settle(fe)
        assert len(transport.out) <= 8 * MiB + MiB + 40 * 16   # a reused cookie over-counts, never under
        for _ in range(200):                              # bounded: only ends a hung test
            if not (len(transport.drain()) or fe.held):
                break
            await _settle(fe)
        assert fe.held == 0 and transport.reading
    _frontend_scenario(body, client_bytes=8 * MiB, total_bytes=16 * MiB)


# --- configuration ----------------------------------------------------------------------------------
def test_nbd_keys_of_the_configuration():
    cfg = config.loads(SERVE_CONFIG + '[nbd]\nhandshake_timeout = 2.5\nclient_inflight = "128M"\n'
                                      'total_inflight = "1G"\n')
    assert (cfg.nbd.handshake_timeout, cfg.nbd.client_inflight, cfg.nbd.total_inflight) == (2.5, 128 * MiB, 1 << 30)
    assert config.default().nbd == config.NbdConfig(10.0, 64 * MiB, 256 * MiB)
    for bad, words in (('handshake_timeout = -1', "handshake_timeout"), ('client_inflight = "1M"', "at least"),
                       ('client_inflight = "512M"', "total_inflight"), ('window = 3', "unknown key 'window'")):
        with pytest.raises(config.ConfigError, match=words):
            config.loads(SERVE_CONFIG + "[nbd]\n" + bad + "\n")


def test_serve_refuses_a_negative_handshake_timeout(tmp_path):
    got = subprocess.run([sys.executable, "-m", "splitpoint", "serve", "--handshake-timeout", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 2 and "'--handshake-timeout': -1.0 is not in the range x>=0" in got.stderr, got.stderr
