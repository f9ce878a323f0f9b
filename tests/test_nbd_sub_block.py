"""Requests of any alignment from NBD clients that negotiated no block size (doc/proto.md: a server
SHOULD then accept 1-byte alignment), checked against a bytearray model; clients that did ask for
NBD_INFO_BLOCK_SIZE still get EINVAL for unaligned I/O.

The server runs in-process (ServiceThread) over a real Controller with RAM LUNs of 512-byte
blocks; the client is tests/nbd_raw.py. The read-modify-write of partial blocks happens in the
controller, in sequence: the ordering tests pipeline an unaligned and an aligned write to one block.
"""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nbd_raw import CMD, ERR, OPT, RawClient
from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.service import ServiceThread
from splitpoint.firmware.requests import FLAG_SUB_BLOCK, Op

MiB = 1 << 20
SIZE = 8 * MiB
CONFIG = f"""
[[lun]]
name = "lun0"
url = "ram://lun0?size={SIZE}"
[lun.pool]
mirror = "sync"
members = ["ram://b0?size={SIZE}", "ram://b1?size={SIZE}", "ram://b2?size={SIZE}"]
"""


def start_service():
    ctl = Controller.from_config(config.loads(CONFIG))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), socket_path=None, control=False)
    service = thread.start()
    host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
    return thread, (host, int(port))


@pytest.fixture(scope="module")
def server():
    thread, address = start_service()
    yield address
    thread.stop()
    assert thread.ctl.counters["callback_errors"] == 0


@pytest.fixture
def fresh_server():
    thread, address = start_service()
    yield address
    thread.stop()


def export_name_client(address, name="lun0"):
    """Negotiates with NBD_OPT_EXPORT_NAME: it cannot learn a block size."""
    c = RawClient(address)
    c.start()
    c.option(OPT["EXPORT_NAME"], name.encode())
    c.size, c.tflags = struct.unpack(">QH", c.recv(10))
    return c


def go_client(address, name="lun0", block_size=False, structured=False):
    """Negotiates with NBD_OPT_GO, asking for NBD_INFO_BLOCK_SIZE only when ``block_size``."""
    c = RawClient(address)
    c.start()
    if structured:
        c.option(OPT["STRUCTURED_REPLY"])
        assert c.opt_replies(OPT["STRUCTURED_REPLY"])[-1][0] == 1
        c.structured = True
    replies = c.go(name, infos=(3,) if block_size else ())
    assert replies[-1][0] == 1, replies
    return c


NEGOTIATIONS = {
    "export-name": export_name_client,
    "go-without-block-size": go_client,
    "go-structured-without-block-size": lambda address, name="lun0": go_client(address, name, structured=True),
}


def noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.mark.parametrize("negotiate", NEGOTIATIONS)
def test_a_client_without_block_sizes_reads_and_writes_at_any_byte(server, negotiate):
    c = NEGOTIATIONS[negotiate](server)
    base = 1 * MiB
    model = bytearray(noise(3 * MiB, 1))
    c.write(base, bytes(model))
    # nbd-tester-client -o: reads of 1 MiB + 14 bytes
    for offset in (0, 1, 511, 513, 4097):
        assert c.read(base + offset, MiB + 14) == model[offset:offset + MiB + 14]
    for offset, length, seed in ((1, 1, 2), (3, 1000, 3), (511, 2, 4), (700, 5000, 5), (MiB - 7, MiB + 14, 6)):
        data = noise(length, seed)
        c.write(base + offset, data)
        model[offset:offset + length] = data
    assert c.do("WRITE_ZEROES", base + 100, 3000).error == 0
    model[100:3100] = bytes(3000)
    assert c.do("WRITE_ZEROES", base + 5000, 20).error == 0          # inside one block
    model[5000:5020] = bytes(20)
    assert c.read(base, 3 * MiB) == model
    # a TRIM trims the whole blocks inside its range; the bytes around them stay
    assert c.do("TRIM", base + 10_000, 5000).error == 0
    got = c.read(base + 9_000, 7000)
    assert got[:1240] == model[9_000:10_240] and got[-1000:] == model[15_000:16_000]
    assert c.do("CACHE", base + 3, 77).error == 0
    c.close()


def test_a_structured_read_below_the_block_names_the_offset_asked_for(server):
    c = go_client(server, structured=True)
    c.write(2 * MiB, noise(4096, 9))
    reply = c.do("READ", 2 * MiB + 13, 100)
    (ctype, payload), = reply.chunks
    assert ctype == 1 and struct.unpack(">Q", payload[:8])[0] == 2 * MiB + 13
    assert payload[8:] == noise(4096, 9)[13:113]
    c.close()


def test_a_client_that_asked_for_block_sizes_still_gets_einval(server):
    c = go_client(server, block_size=True)
    for cmd, offset, length, payload in (("READ", 100, 512, b""), ("READ", 0, 100, b""),
                                         ("WRITE", 7, 0, b"\1" * 512), ("WRITE", 0, 0, b"\1" * 100),
                                         ("TRIM", 1, 512, b""), ("WRITE_ZEROES", 0, 511, b""),
                                         ("CACHE", 3, 512, b"")):
        assert c.do(cmd, offset, length, payload=payload).error == ERR["EINVAL"], (cmd, offset, length)
    c.close()


def test_the_read_modify_write_stays_in_sequence(server):
    c = export_name_client(server)
    block = 5 * MiB
    c.write(block, b"\x00" * 512)
    # pipelined in one send: an unaligned write, then an aligned write of the same block (it wins)...
    c.send(struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 1, block + 100, 100) + b"\xaa" * 100
           + struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 2, block, 512) + b"\xbb" * 512)
    c.pending.update({1: (CMD["WRITE"], 0), 2: (CMD["WRITE"], 0)})
    assert sorted((r.cookie, r.error) for r in (c.reply(), c.reply())) == [(1, 0), (2, 0)]
    assert c.read(block, 512) == b"\xbb" * 512
    # ... and an aligned write, then an unaligned one: merged into what the first left
    c.send(struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 3, block, 512) + b"\xcc" * 512
           + struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 4, block + 100, 100) + b"\xdd" * 100
           + struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE_ZEROES"], 5, block + 300, 10))
    c.pending.update({3: (CMD["WRITE"], 0), 4: (CMD["WRITE"], 0), 5: (CMD["WRITE_ZEROES"], 0)})
    assert sorted((r.cookie, r.error) for r in (c.reply(), c.reply(), c.reply())) == [(3, 0), (4, 0), (5, 0)]
    assert c.read(block, 512) == b"\xcc" * 100 + b"\xdd" * 100 + b"\xcc" * 100 + bytes(10) + b"\xcc" * 202
    c.close()


def test_unaligned_writes_reach_the_backup_and_the_special_lun_takes_a_short_label(fresh_server):
    c = export_name_client(fresh_server)
    model = bytearray(SIZE)
    for offset, length, seed in ((3, 10, 1), (1000, 3333, 2), (MiB - 1, 2, 3)):
        data = noise(length, seed)
        c.write(offset, data)
        model[offset:offset + length] = data
    trigger = export_name_client(fresh_server, "trigger")
    assert trigger.do("WRITE", 0, payload=b"short\0").error == 0      # 6 bytes: a TRIGGER labelled 'short'
    backup = export_name_client(fresh_server, "lun0.t1")
    assert backup.read(1, 2 * MiB) == model[1:2 * MiB + 1]
    path = export_name_client(fresh_server, "lun0.trigger")     # the special path: write, then TRIGGER
    path.write(5, b"xyz")
    model[5:8] = b"xyz"
    second = export_name_client(fresh_server, "lun0.t2")
    assert second.read(0, 4096) == model[:4096] and c.read(0, 4096) == model[:4096]
    for x in (c, trigger, backup, path, second):
        x.close()


def test_block_status_below_the_block_starts_at_the_offset_asked_for(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["STRUCTURED_REPLY"])
    assert c.opt_replies(OPT["STRUCTURED_REPLY"])[-1][0] == 1
    c.structured = True
    c.option(OPT["SET_META_CONTEXT"], c.meta_data("lun0", ["base:allocation"]))
    assert c.opt_replies(OPT["SET_META_CONTEXT"])[-1][0] == 1
    assert c.go("lun0")[-1][0] == 1                        # no NBD_INFO_BLOCK_SIZE asked
    c.write(7 * MiB, b"\x01" * (64 << 10))
    assert c.do("WRITE_ZEROES", 7 * MiB + (64 << 10), 64 << 10).error == 0
    for offset, length in (((64 << 10) - 100, 300), (1, 1), (333, 100_000)):
        reply = c.do("BLOCK_STATUS", 7 * MiB + offset, length)
        (ctype, payload), = reply.chunks
        words = struct.unpack(f">{len(payload) // 4}I", payload)[1:]
        extents = list(zip(words[::2], words[1::2]))
        if offset == (64 << 10) - 100:
            extents_of_first = extents
        assert sum(n for n, _ in extents) == length and extents[0][0] <= length
        if offset < (64 << 10):
            assert extents[0][1] & 2 == 0                    # data first: the written chunk
    assert extents_of_first == [(100, 0), (200, extents_of_first[1][1])] and extents_of_first[1][1] & 2
    c.close()


OPS = st.lists(st.tuples(st.sampled_from(["WRITE", "WRITE", "READ", "WRITE_ZEROES"]),
                         st.integers(0, 64 << 10), st.integers(1, 9000), st.integers(0, 2 ** 32)),
               min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_unaligned_streams_match_a_model(server, ops):
    region, span = 6 * MiB, (64 << 10) + 9000
    c = go_client(server)
    assert c.do("WRITE_ZEROES", region, span + 512 - span % 512).error == 0
    model = bytearray(span)
    try:
        for op, offset, length, seed in ops:
            length = min(length, span - offset)
            if op == "WRITE":
                data = noise(length, seed)
                assert c.do("WRITE", region + offset, payload=data).error == 0
                model[offset:offset + length] = data
            elif op == "WRITE_ZEROES":
                assert c.do("WRITE_ZEROES", region + offset, length).error == 0
                model[offset:offset + length] = bytes(length)
            else:
                assert c.read(region + offset, length) == model[offset:offset + length]
        assert c.read(region, span) == model
    finally:
        c.close()


def test_the_controller_reads_modifies_and_writes_a_sub_block_request_and_mirrors_it():
    with Controller.from_config(config.loads(CONFIG)) as ctl:
        lun = ctl.luns["lun0"]
        ctl.write(lun, 0, b"\x11" * 2048)
        done = []
        for op, offset, length, data in ((Op.WRITE, 100, 3, b"abc"), (Op.WRITE_ZEROES, 1000, 600, None),
                                         (Op.TRIM, 1500, 10, None), (Op.WRITE, 511, 2, b"yz")):
            ctl.submit(lun, op, offset, length, data, FLAG_SUB_BLOCK, None, done.append)
        ctl.poll()
        assert [c.error for c in done] == [None] * 4
        expected = bytearray(b"\x11" * 2048)
        expected[100:103] = b"abc"
        expected[1000:1600] = bytes(600)
        expected[511:513] = b"yz"
        assert ctl.read(lun, 0, 2048) == expected
        ctl.trigger(lun)
        assert ctl.read_backup(lun, 1, 0, 2048) == expected       # the mirror got whole blocks
        failed = []
        ctl.submit(lun, Op.WRITE, 100, 3, b"abc", 0, None, failed.append)    # without the flag: refused
        ctl.submit(lun, Op.READ, 100, 3, None, FLAG_SUB_BLOCK, None, failed.append)
        ctl.submit(lun, Op.WRITE, 100, 3, b"ab", FLAG_SUB_BLOCK, None, failed.append)
        ctl.submit(lun, Op.WRITE, SIZE - 1, 2, b"ab", FLAG_SUB_BLOCK, None, failed.append)
        ctl.poll()
        assert [type(c.error).__name__ for c in failed] == ["MisalignedError", "BadRequestError",
                                                            "BadRequestError", "OutOfRangeError"]
