"""The NBD server speaking raw bytes: handshake, options, commands, replies and errors per doc/proto.md.

The server runs in-process on its own event-loop thread (ServiceThread) over a real Controller
with small RAM LUNs; the client is tests/nbd_raw.py, packed by hand from the protocol document.
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from nbd_raw import CMD, ERR, FLAG, OPT, REP, TF, RawClient
from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.service import ServiceThread

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


def start_service(tmp_path=None):
    ctl = Controller.from_config(config.loads(CONFIG))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), socket_path=None, control=False)
    service = thread.start()
    host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
    return thread, (host, int(port))


def stop_service(thread):
    thread.stop()
    # the controller swallows exceptions raised by completion callbacks: none may have happened
    assert thread.ctl.counters["callback_errors"] == 0


@pytest.fixture(scope="module")
def server():
    thread, address = start_service()
    yield address
    stop_service(thread)


@pytest.fixture
def fresh_server():
    """A server of its own, for tests that cut backups or stop the server."""
    thread, address = start_service()
    yield thread, address
    stop_service(thread)


@pytest.fixture
def client(server):
    clients = []

    def make(name="lun0", structured=False, meta=False):
        c = RawClient(server)
        clients.append(c)
        return c.connect(name, structured=structured, meta=meta)
    yield make
    for c in clients:
        c.close()


def pattern(n, seed):
    period = bytes((seed + i * 7) & 0xFF for i in range(256))
    return (period * (n // 256 + 1))[:n]


# --- handshake ----------------------------------------------------------------------------
def test_greeting_offers_fixed_newstyle_and_no_zeroes(server):
    c = RawClient(server)
    assert c.greeting() == 0b11
    c.close()


def test_unknown_client_flags_drop_the_connection(server):
    c = RawClient(server)
    c.greeting()
    c.send(struct.pack(">I", 0x80))
    assert c.is_closed()


def test_bad_option_magic_drops_the_connection(server):
    c = RawClient(server)
    c.start()
    c.send(struct.pack(">QII", 0x1122334455667788, OPT["GO"], 0))
    assert c.is_closed()


def test_unknown_option_is_unsupported_and_the_handshake_goes_on(server):
    c = RawClient(server)
    c.start()
    for opt in (99, OPT["STARTTLS"], OPT["EXTENDED_HEADERS"], 4):
        c.option(opt, b"xyz" if opt == 99 else b"")
        (rtype, payload), = c.opt_replies(opt)
        assert rtype == REP["ERR_UNSUP"]
        assert payload  # a message for the human
    assert c.go("lun0")[-1][0] == REP["ACK"]
    assert c.size == SIZE
    c.close()


def test_oversized_option_is_refused_and_skipped(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["INFO"], b"\0" * (100 << 10))
    assert c.opt_replies(OPT["INFO"])[-1][0] == REP["ERR_TOO_BIG"]
    c.option(1234, b"\0" * (200 << 10))
    assert c.opt_replies(1234)[-1][0] == REP["ERR_UNSUP"]
    assert c.go("")[-1][0] == REP["ACK"]
    c.close()


def test_list_names_every_export_with_a_description(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["LIST"])
    replies = c.opt_replies(OPT["LIST"])
    assert replies[-1][0] == REP["ACK"]
    listing = {}
    for rtype, payload in replies[:-1]:
        assert rtype == REP["SERVER"]
        (n,) = struct.unpack(">I", payload[:4])
        listing[payload[4:4 + n].decode()] = payload[4 + n:].decode()
    assert {"lun0", "lun0.trigger", "trigger"} <= set(listing)
    assert all(listing.values())
    c.option(OPT["LIST"], b"junk")
    assert c.opt_replies(OPT["LIST"])[-1][0] == REP["ERR_INVALID"]
    c.close()


def test_info_reports_export_block_size_name_description_and_stays_in_options(server):
    c = RawClient(server)
    c.start()
    replies = c.go("", infos=(1, 2, 3), opt=OPT["INFO"])
    assert replies[-1][0] == REP["ACK"]
    infos = {struct.unpack(">H", p[:2])[0]: p[2:] for t, p in replies if t == REP["INFO"]}
    size, tflags = struct.unpack(">QH", infos[0])
    assert size == SIZE
    for flag in ("HAS_FLAGS", "SEND_FLUSH", "SEND_FUA", "SEND_TRIM", "SEND_WRITE_ZEROES", "CAN_MULTI_CONN",
                 "SEND_CACHE", "SEND_FAST_ZERO"):
        assert tflags & TF[flag], flag
    assert not tflags & TF["READ_ONLY"]
    assert not tflags & TF["SEND_DF"]          # structured replies were not negotiated
    minimum, preferred, maximum = struct.unpack(">III", infos[3])
    assert (minimum, preferred, maximum) == (512, 4096, 64 * MiB)
    assert infos[1] == b"lun0"
    assert b"lun0" in infos[2]
    assert c.go("lun0")[-1][0] == REP["ACK"]      # still negotiating: GO works after INFO
    c.close()


def test_info_and_go_errors(server):
    c = RawClient(server)
    c.start()
    assert c.go("nope")[-1][0] == REP["ERR_UNKNOWN"]
    bad = struct.pack(">I", 50) + b"lun0" + struct.pack(">H", 0)    # name length past the data
    c.option(OPT["GO"], bad)
    assert c.opt_replies(OPT["GO"])[-1][0] == REP["ERR_INVALID"]
    c.option(OPT["GO"], RawClient.info_data("lun0", (1,)) + b"\0")  # trailing byte
    assert c.opt_replies(OPT["GO"])[-1][0] == REP["ERR_INVALID"]
    c.option(OPT["GO"], b"\0\0")
    assert c.opt_replies(OPT["GO"])[-1][0] == REP["ERR_INVALID"]
    assert c.go("lun0")[-1][0] == REP["ACK"]
    c.close()


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_export_name_reply_with_and_without_zeroes(server, no_zeroes):
    c = RawClient(server)
    c.start(client_flags=3 if no_zeroes else 1)
    c.option(OPT["EXPORT_NAME"], b"lun0")
    size, tflags = struct.unpack(">QH", c.recv(10))
    assert size == SIZE and tflags & TF["HAS_FLAGS"]
    if not no_zeroes:
        assert c.recv(124) == bytes(124)
    c.pending[7] = (CMD["READ"], 512)
    c.send(struct.pack(">IHHQQI", 0x25609513, 0, 0, 7, 0, 512))
    reply = c.reply()
    assert reply.error == 0 and len(reply.data) == 512
    c.close()


def test_export_name_for_an_unknown_export_ends_the_session(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["EXPORT_NAME"], b"missing")
    assert c.is_closed()


def test_abort_is_acknowledged_then_closed(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["ABORT"])
    assert c.opt_replies(OPT["ABORT"])[-1][0] == REP["ACK"]
    assert c.is_closed()


def test_structured_reply_option(server):
    c = RawClient(server)
    c.start()
    c.option(OPT["STRUCTURED_REPLY"], b"x")
    assert c.opt_replies(OPT["STRUCTURED_REPLY"])[-1][0] == REP["ERR_INVALID"]
    c.option(OPT["STRUCTURED_REPLY"])
    assert c.opt_replies(OPT["STRUCTURED_REPLY"])[-1][0] == REP["ACK"]
    c.structured = True
    replies = c.go("lun0")
    assert replies[-1][0] == REP["ACK"]
    assert c.tflags & TF["SEND_DF"]
    c.close()


def test_meta_contexts(server):
    c = RawClient(server)
    c.start()
    # SET before structured replies is refused
    c.option(OPT["SET_META_CONTEXT"], RawClient.meta_data("lun0", ["base:allocation"]))
    assert c.opt_replies(OPT["SET_META_CONTEXT"])[-1][0] == REP["ERR_INVALID"]
    c.option(OPT["STRUCTURED_REPLY"])
    c.opt_replies(OPT["STRUCTURED_REPLY"])

    def listed(queries, name="lun0", opt=OPT["LIST_META_CONTEXT"]):
        c.option(opt, RawClient.meta_data(name, queries))
        replies = c.opt_replies(opt)
        return replies[-1][0], [(struct.unpack(">I", p[:4])[0], p[4:].decode())
                                for t, p in replies if t == REP["META_CONTEXT"]]

    assert listed([]) == (REP["ACK"], [(0, "base:allocation")])
    assert listed(["base:"]) == (REP["ACK"], [(0, "base:allocation")])
    assert listed(["x-other:thing", "base:nonesuch"]) == (REP["ACK"], [])
    assert listed(["nocolon"])[0] == REP["ERR_INVALID"]
    assert listed([], name="missing")[0] == REP["ERR_UNKNOWN"]
    status, contexts = listed(["base:allocation", "qemu:dirty-bitmap:x"], opt=OPT["SET_META_CONTEXT"])
    assert status == REP["ACK"] and len(contexts) == 1
    assert contexts[0][0] != 0 and contexts[0][1] == "base:allocation"
    # a truncated query list is syntactically invalid
    c.option(OPT["LIST_META_CONTEXT"], RawClient.meta_data("lun0", ["base:allocation"])[:-3])
    assert c.opt_replies(OPT["LIST_META_CONTEXT"])[-1][0] == REP["ERR_INVALID"]
    c.close()


# --- transmission -------------------------------------------------------------------------------
@pytest.mark.parametrize("structured", [False, True])
def test_write_read_flush_round_trip(client, structured):
    c = client(structured=structured)
    data = pattern(64 << 10, 3)
    c.write(1 * MiB, data)
    c.write(1 * MiB + (64 << 10), data, flags=FLAG["FUA"])
    assert c.do("FLUSH").error == 0
    assert c.read(1 * MiB, 128 << 10) == data + data
    if structured:
        reply = c.do("READ", 1 * MiB, 4096, flags=FLAG["DF"])
        assert reply.error == 0 and len(reply.chunks) == 1 and reply.chunks[0][0] == 1
        assert struct.unpack(">Q", reply.chunks[0][1][:8])[0] == 1 * MiB


def test_large_writes_and_reads_followed_by_small_ones(client):
    c = client()
    big = pattern(3 * MiB, 77)
    cookies = [c.request("WRITE", 0, payload=big), c.request("WRITE", 3 * MiB, payload=pattern(4096, 1)),
               c.request("WRITE", 3 * MiB + 4096, payload=pattern(200 << 10, 2))]
    assert sorted(c.reply().cookie for _ in cookies) == sorted(cookies)
    assert c.read(0, 3 * MiB) == big
    assert c.read(3 * MiB, 4096 + (200 << 10)) == pattern(4096, 1) + pattern(200 << 10, 2)


def test_trim_write_zeroes_and_cache(client):
    c = client()
    c.write(2 * MiB, b"\xff" * 8192)
    assert c.do("TRIM", 2 * MiB, 4096).error == 0
    assert c.do("WRITE_ZEROES", 2 * MiB + 4096, 4096, flags=FLAG["NO_HOLE"]).error == 0
    assert c.read(2 * MiB, 8192) == bytes(8192)
    c.write(2 * MiB, b"\xee" * 4096)
    reply = c.do("WRITE_ZEROES", 2 * MiB, 4096, flags=FLAG["FAST_ZERO"])
    assert reply.error in (0, ERR["ENOTSUP"])
    if reply.error == 0:
        assert c.read(2 * MiB, 4096) == bytes(4096)
    assert c.do("CACHE", 0, 1 * MiB).error == 0


def test_block_status_reports_zero_and_data(client):
    c = client(meta=True)
    c.write(3 * MiB, b"\x01" * (64 << 10))
    assert c.do("TRIM", 3 * MiB + (256 << 10), 256 << 10).error == 0
    reply = c.do("BLOCK_STATUS", 3 * MiB, 1 * MiB)
    assert reply.error == 0
    (ctype, payload), = reply.chunks
    assert ctype == 5
    ctx, *rest = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)
    assert ctx == c.meta_id
    extents = list(zip(rest[::2], rest[1::2]))
    assert sum(length for length, _ in extents) == 1 * MiB
    assert extents[0][1] & 2 == 0                  # the written chunk is not reported as zero
    offset = 3 * MiB
    for length, flags in extents:
        if offset >= 3 * MiB + (256 << 10) and offset + length <= 3 * MiB + (512 << 10):
            assert flags & 2                        # the trimmed range reads as zeros
        offset += length
    one = c.do("BLOCK_STATUS", 3 * MiB, 1 * MiB, flags=FLAG["REQ_ONE"])
    (ctype, payload), = one.chunks
    assert len(payload) == 12 and struct.unpack(">I", payload[4:8])[0] <= 1 * MiB


def test_block_status_without_a_meta_context_is_einval(client):
    c = client(structured=True)
    reply = c.do("BLOCK_STATUS", 0, 4096)
    assert reply.error == ERR["EINVAL"] and reply.message


@pytest.mark.parametrize("structured", [False, True])
def test_request_errors(client, structured):
    c = client(structured=structured)
    cases = [
        (dict(cmd=42, offset=0, length=512), ERR["EINVAL"]),                         # unknown command
        (dict(cmd="READ", offset=0, length=512, flags=0x40), ERR["EINVAL"]),       # unknown flag
        (dict(cmd="READ", offset=0, length=512, flags=FLAG["REQ_ONE"]), ERR["EINVAL"]),  # flag of another command
        (dict(cmd="READ", offset=SIZE - 512, length=1024), ERR["EINVAL"]),          # past the end
        (dict(cmd="READ", offset=2**63, length=512), ERR["EINVAL"]),                # overflowing offset
        (dict(cmd="WRITE", offset=SIZE, payload=b"\0" * 512), ERR["ENOSPC"]),       # write past the end
        (dict(cmd="WRITE_ZEROES", offset=SIZE - 512, length=4096), ERR["ENOSPC"]),
        (dict(cmd="TRIM", offset=SIZE, length=512), ERR["EINVAL"]),
        (dict(cmd="READ", offset=100, length=512), ERR["EINVAL"]),                  # unaligned offset
        (dict(cmd="WRITE", offset=0, payload=b"\0" * 100), ERR["EINVAL"]),          # unaligned length
        (dict(cmd="FLUSH", offset=512, length=0), ERR["EINVAL"]),
        (dict(cmd="READ", offset=0, length=65 * MiB), ERR["EOVERFLOW"] if structured else ERR["EINVAL"]),
    ]
    if not structured:
        cases.append((dict(cmd="READ", offset=0, length=512, flags=FLAG["DF"]), ERR["EINVAL"]))
    for kwargs, expected in cases:
        reply = c.do(**kwargs)
        assert reply.error == expected, (kwargs, reply)
        if structured:
            assert reply.message, kwargs
    # nothing was written by the failed requests and the connection still works
    assert c.read(0, 512) == c.read(0, 512)


def test_oversized_write_is_skipped_and_refused(client):
    c = client()
    length = 64 * MiB + 512
    cookie = c.request("WRITE", 0, length)
    chunk = b"\x5a" * MiB
    sent = 0
    while sent < length:
        n = min(len(chunk), length - sent)
        c.send(chunk[:n])
        sent += n
    reply = c.reply()
    assert reply.cookie == cookie and reply.error == ERR["EINVAL"]
    assert c.read(0, 512) != b"\x5a" * 512


def test_zero_length_requests_do_not_disconnect(client):
    c = client(structured=True)
    assert c.do("READ", 0, 0).error == 0
    assert c.do("WRITE", 0, 0).error == 0
    assert c.do("TRIM", 0, 0).error == 0
    assert c.read(0, 512) is not None


def test_bad_request_magic_disconnects_only_that_client(client, server):
    good = client()
    bad = client()
    good.write(4 * MiB, b"\x33" * 4096)
    bad.send(struct.pack(">IHHQQI", 0xDEADBEEF, 0, 0, 1, 0, 512))
    assert bad.is_closed()
    assert good.read(4 * MiB, 4096) == b"\x33" * 4096


def test_disc_answers_requests_in_flight_then_closes(client):
    c = client()
    cookies = [c.request("WRITE", 5 * MiB + i * 4096, payload=pattern(4096, i)) for i in range(32)]
    c.disconnect()
    got = {c.reply().cookie for _ in cookies}
    assert got == set(cookies)
    assert c.is_closed()
    check = client()
    assert check.read(5 * MiB, 4096) == pattern(4096, 0)


def test_client_vanishing_mid_request_leaves_others_unaffected(client, server):
    other = client()
    # a write header with half its payload, then gone
    v1 = client()
    v1.send(struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 1, 6 * MiB, 65536) + b"\x77" * 30000)
    v1.sock.close()
    # many reads queued, then gone without reading the replies
    v2 = client()
    for i in range(200):
        v2.request("READ", 0, 64 << 10)
    v2.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    v2.sock.close()
    time.sleep(0.2)
    other.write(6 * MiB, b"\x11" * 4096)
    assert other.read(6 * MiB, 65536) == b"\x11" * 4096 + bytes(65536 - 4096)


def test_multi_conn_flush_covers_writes_of_every_connection(client):
    writers = [client() for _ in range(4)]
    flusher = client()
    assert flusher.tflags & TF["CAN_MULTI_CONN"]
    for i, w in enumerate(writers):
        w.write(7 * MiB + i * 4096, pattern(4096, 40 + i))
    assert flusher.do("FLUSH").error == 0
    for i in range(4):
        assert flusher.read(7 * MiB + i * 4096, 4096) == pattern(4096, 40 + i)


def test_pipelined_requests_in_one_send(client):
    """Many requests arrive in one segment: every one is parsed and answered."""
    c = client()
    blob = b""
    for i in range(64):
        c.pending[1000 + i] = (CMD["WRITE"], 512)
        blob += struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 1000 + i, i * 512, 512) + pattern(512, i)
    c.send(blob)
    assert sorted(c.reply().cookie for _ in range(64)) == list(range(1000, 1064))
    assert c.read(0, 64 * 512) == b"".join(pattern(512, i) for i in range(64))


def test_request_split_across_many_segments(client):
    c = client()
    msg = struct.pack(">IHHQQI", 0x25609513, 0, CMD["WRITE"], 9, 512 * 3, 1024) + pattern(1024, 9)
    c.pending[9] = (CMD["WRITE"], 1024)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(msg)):
        c.send(msg[i:i + 1])
    assert c.reply().error == 0
    assert c.read(512 * 3, 1024) == pattern(1024, 9)


# --- exports ------------------------------------------------------------------------------------
def listing(address) -> dict[str, str]:
    """export name -> description, from NBD_OPT_LIST."""
    c = RawClient(address)
    c.start()
    c.option(OPT["LIST"])
    names = {}
    for rtype, payload in c.opt_replies(OPT["LIST"])[:-1]:
        (n,) = struct.unpack(">I", payload[:4])
        names[payload[4:4 + n].decode()] = payload[4 + n:].decode()
    c.close()
    return names


def test_trigger_lun_reads_zeros_and_its_write_cuts_a_labelled_backup(fresh_server):
    _thread, address = fresh_server
    data = RawClient(address).connect("lun0")
    data.write(0, b"\xaa" * 4096)
    trig = RawClient(address).connect("trigger")
    assert trig.read(0, 4096) == bytes(4096)
    assert trig.tflags & TF["CAN_MULTI_CONN"] and not trig.tflags & TF["READ_ONLY"]
    trig.write(4096, b"ignored".ljust(512, b"\0"))          # not at offset 0: no TRIGGER
    trig.write(0, b"nightly".ljust(512, b"\0"))
    data.write(0, b"\xbb" * 4096)
    names = listing(address)
    assert "lun0.t1" in names and "lun0.t2" not in names
    assert "nightly" in names["lun0.t1"] and "seq" in names["lun0.t1"]
    backup = RawClient(address).connect("lun0.t1")
    assert backup.tflags & TF["READ_ONLY"]
    assert backup.read(0, 4096) == b"\xaa" * 4096
    assert data.read(0, 4096) == b"\xbb" * 4096
    latest = RawClient(address).connect("lun0.latest")
    assert latest.read(0, 4096) == b"\xaa" * 4096


def test_trigger_lun_takes_any_bytes_as_the_label(fresh_server):
    thread, address = fresh_server
    trig = RawClient(address).connect("trigger")
    trig.write(0, b"\xab" * 4096)                 # a pattern, not text: still a TRIGGER
    trig.write(0, "café ☕".encode().ljust(512, b"\0"))
    names = listing(address)
    assert "label '" + "\\xab" * 64 + "'" in names["lun0.t1"]
    assert "label 'café ☕'" in names["lun0.t2"]


def test_special_path_write_is_followed_by_a_trigger(fresh_server):
    _thread, address = fresh_server
    path = RawClient(address).connect("lun0.trigger")
    assert path.size == SIZE
    path.write(8192, b"\xcc" * 4096)
    backup = RawClient(address).connect("lun0.t1")
    assert backup.read(8192, 4096) == b"\xcc" * 4096
    path.write(8192, b"\xdd" * 4096)
    assert RawClient(address).connect("lun0.t1").read(8192, 4096) == b"\xcc" * 4096
    assert RawClient(address).connect("lun0.t2").read(8192, 4096) == b"\xdd" * 4096
    assert path.read(8192, 4096) == b"\xdd" * 4096


@pytest.mark.parametrize("structured", [False, True])
def test_backup_exports_are_read_only(fresh_server, structured):
    _thread, address = fresh_server
    RawClient(address).connect("trigger").write(0, b"ro".ljust(512, b"\0"))
    c = RawClient(address).connect("lun0.t1", structured=structured)
    assert c.tflags & TF["READ_ONLY"]
    assert c.do("WRITE", 0, payload=b"\0" * 512).error == ERR["EPERM"]
    assert c.do("TRIM", 0, 512).error == ERR["EPERM"]
    assert c.do("WRITE_ZEROES", 0, 512).error == ERR["EPERM"]
    assert c.do("FLUSH").error == 0
    assert len(c.read(0, 4096)) == 4096


def test_unknown_backup_exports(fresh_server):
    _thread, address = fresh_server
    c = RawClient(address)
    c.start()
    for name in ("lun0.latest", "lun0.t1", "lun0.t0", "lun0.t01", "lun9", "lun9.t1", "lun0.tx"):
        assert c.go(name)[-1][0] == REP["ERR_UNKNOWN"], name


def test_requests_while_stopping_get_eshutdown(fresh_server):
    thread, address = fresh_server
    c = RawClient(address).connect("lun0", structured=True)
    fe = thread.service.frontend
    thread._loop.call_soon_threadsafe(setattr, fe, "stopping", True)
    time.sleep(0.05)
    reply = c.do("READ", 0, 512)
    assert reply.error == ERR["ESHUTDOWN"]
    late = RawClient(address)
    late.start()
    assert late.go("lun0")[-1][0] == REP["ERR_SHUTDOWN"]


def test_unix_socket(tmp_path):
    ctl = Controller.from_config(config.loads(CONFIG))
    path = str(tmp_path / "nbd.sock")
    with ServiceThread(ctl, listen=None, socket_path=path, control=False) as service:
        assert service.endpoints == [f"nbd+unix:///?socket={path}"]
        c = RawClient(path).connect("")
        c.write(0, b"\x42" * 512)
        assert c.read(0, 512) == b"\x42" * 512
        c.close()
    assert not os.path.exists(path)


# --- property: any sequence of requests over NBD equals a plain model ---------------------------
OPS = st.lists(st.tuples(st.sampled_from(["WRITE", "TRIM", "WRITE_ZEROES", "READ", "FLUSH"]),
                         st.integers(0, 63), st.integers(1, 8), st.integers(0, 255)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_requests_match_a_model(client, ops):
    c = client()
    base = 7 * MiB + (512 << 10)
    region = 64 * 4096
    model = bytearray(c.read(base, region))
    for op, block, count, seed in ops:
        offset = block * 4096
        length = min(count * 4096, region - offset)
        if op == "WRITE":
            data = pattern(length, seed)
            c.write(base + offset, data)
            model[offset:offset + length] = data
        elif op in ("TRIM", "WRITE_ZEROES"):
            assert c.do(op, base + offset, length).error == 0
            model[offset:offset + length] = bytes(length)
        elif op == "FLUSH":
            assert c.do("FLUSH").error == 0
        else:
            assert c.read(base + offset, length) == bytes(model[offset:offset + length])
    assert c.read(base, region) == bytes(model)


def test_many_clients_at_once(server):
    errors = []

    def worker(i):
        try:
            c = RawClient(server).connect("lun0")
            for j in range(20):
                off = 5 * MiB + (i * 20 + j) * 4096
                c.write(off, pattern(4096, i + j))
                assert c.read(off, 4096) == pattern(4096, i + j)
            c.disconnect()
            c.close()
        except Exception as exc:  # collected and asserted in the main thread
            errors.append(exc)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# --- any split of the byte stream gives the same answers (in-process, deterministic chunking) -----
class _Transport:
    """Just enough of an asyncio transport to feed a connection by hand."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def write(self, data):
        self.out += data

    def get_extra_info(self, name, default=None):
        return default

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed


SIZES = st.sampled_from([512, 4096, 65536, 128 << 10, 200 << 10, 1 << 20])


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["WRITE", "READ"]), st.integers(0, 15), SIZES, st.integers(0, 255)),
                    min_size=1, max_size=12),
       cuts=st.lists(st.integers(1, 300_000), min_size=0, max_size=30))
def test_any_segmentation_of_the_stream_gives_the_same_answers(ops, cuts):
    import asyncio

    from splitpoint.firmware.frontend.nbd import NbdConnection
    from splitpoint.firmware.frontend.service import FrontEnd

    async def scenario():
        ctl = Controller.from_config(config.loads(CONFIG))
        fe = FrontEnd(ctl)
        conn, transport = NbdConnection(fe), _Transport()
        conn.connection_made(transport)
        name = b"lun0"
        stream = bytearray(struct.pack(">I", 3))
        stream += struct.pack(">QII", 0x49484156454F5054, 7, 6 + len(name)) + struct.pack(">I", len(name)) + name
        stream += b"\0\0"
        model = bytearray(SIZE)
        expected = {}
        for i, (op, slot, size, seed) in enumerate(ops):
            offset = slot * MiB // 2
            size = min(size, SIZE - offset)
            if op == "WRITE":
                data = pattern(size, seed)
                stream += struct.pack(">IHHQQI", 0x25609513, 0, 1, i, offset, size) + data
                model[offset:offset + size] = data
                expected[i] = (1, b"")
            else:
                stream += struct.pack(">IHHQQI", 0x25609513, 0, 0, i, offset, size)
                expected[i] = (0, bytes(model[offset:offset + size]))
        points = sorted({c % len(stream) for c in cuts} | {0, len(stream)})
        for a, b in zip(points, points[1:]):
            conn.data_received(bytes(stream[a:b]))
            fe._tick()
        for _ in range(10):
            fe._tick()
        ctl.close()
        return bytes(transport.out), expected

    out, expected = asyncio.run(scenario())
    pos = 18
    while True:   # option replies up to the final ACK of GO
        _magic, _opt, rtype, length = struct.unpack_from(">QIII", out, pos)
        pos += 20 + length
        if rtype == 1:
            break
    seen = set()
    while pos < len(out):
        magic, error, cookie = struct.unpack_from(">IIQ", out, pos)
        pos += 16
        assert magic == 0x67446698 and error == 0 and cookie not in seen
        seen.add(cookie)
        cmd, data = expected[cookie]
        if cmd == 0:
            assert out[pos:pos + len(data)] == data
            pos += len(data)
    assert seen == set(expected)


def test_requests_of_64_mib_are_accepted():
    big = """
[[lun]]
name = "lun0"
url = "ram://lun0?size=128M"
[lun.pool]
members = ["ram://b0?size=128M", "ram://b1?size=128M"]
"""
    ctl = Controller.from_config(config.loads(big))
    with ServiceThread(ctl, listen=("127.0.0.1", 0), control=False) as service:
        host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
        c = RawClient((host, int(port)), timeout=60).connect("lun0", structured=True)
        data = pattern(64 * MiB, 5)
        c.write(32 * MiB, data)
        assert c.read(32 * MiB, 64 * MiB) == data
        simple = RawClient((host, int(port)), timeout=60).connect("lun0")
        assert simple.read(32 * MiB, 64 * MiB) == data
        assert simple.do("READ", 0, 64 * MiB + 512).error == ERR["EINVAL"]


def test_a_full_ring_holds_requests_back_in_order():
    """A ring of 4 slots under pipelined load from several clients: nothing lost, nothing reordered."""
    tiny = CONFIG.replace("[[lun]]", "[controller]\nring_capacity = 4\n\n[[lun]]", 1)
    ctl = Controller.from_config(config.loads(tiny))
    with ServiceThread(ctl, listen=("127.0.0.1", 0), control=False) as service:
        host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
        address = (host, int(port))
        clients = [RawClient(address).connect("lun0") for _ in range(3)]
        path = RawClient(address).connect("lun0.trigger")
        for round_ in range(3):
            for i, c in enumerate(clients):
                for j in range(100):
                    c.request("WRITE", (i * 100 + j) * 4096, payload=pattern(4096, round_ + i + j))
            path.request("WRITE", 6 * MiB + round_ * 4096, payload=pattern(4096, 200 + round_))
        for c in clients + [path]:
            replies = [c.reply() for _ in range(len(c.pending))]
            assert all(r.error == 0 for r in replies)
        for i, c in enumerate(clients):
            for j in range(100):
                assert c.read((i * 100 + j) * 4096, 4096) == pattern(4096, 2 + i + j)
        # every special-path write is in the backup its TRIGGER cut
        names = listing(address)
        newest = max(int(n.split(".t")[1]) for n in names if ".t" in n and n[-1].isdigit())
        assert RawClient(address).connect(f"lun0.t{newest}").read(6 * MiB + 2 * 4096, 4096) == pattern(4096, 202)
    assert ctl.counters["queue_full"] > 0, "the ring never filled: the test did not test anything"
    assert ctl.counters["callback_errors"] == 0


def test_a_flood_of_pipelined_requests_is_answered():
    ctl = Controller.from_config(config.loads(CONFIG))
    with ServiceThread(ctl, listen=("127.0.0.1", 0), control=False) as service:
        host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
        c = RawClient((host, int(port)), timeout=60).connect("lun0")
        blob = b"".join(struct.pack(">IHHQQI", 0x25609513, 0, 0, i, (i % 64) * 512, 512) for i in range(20000))
        for i in range(20000):
            c.pending[i] = (0, 512)
        sender = threading.Thread(target=c.send, args=(blob,))
        sender.start()
        got = {c.reply().cookie for _ in range(20000)}
        sender.join()
        assert got == set(range(20000))


def test_listen_addresses_and_labels():
    from splitpoint.firmware.triggers import special_lun_label as label_from_bytes
    from splitpoint.firmware.frontend.service import parse_listen

    assert parse_listen("127.0.0.1:10809") == ("127.0.0.1", 10809)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("10810") == ("127.0.0.1", 10810)
    for bad in ("host:", "host:http", "1.2.3.4:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)
    assert label_from_bytes(b"nightly\0garbage") == b"nightly"
    assert label_from_bytes(b"\0" * 512) is None
    assert label_from_bytes(b"x" * 100) == b"x" * 64


def test_reading_a_recycled_backup_fails_with_eio_and_a_message(fresh_server):
    _thread, address = fresh_server
    trig = RawClient(address).connect("trigger")
    trig.write(0, b"first".ljust(512, b"\0"))
    held = RawClient(address).connect("lun0.t1", structured=True)
    assert held.do("READ", 0, 4096).error == 0
    trig.write(0, b"second".ljust(512, b"\0"))
    trig.write(0, b"third".ljust(512, b"\0"))          # a pool of 3 recycles the member of t1
    assert "lun0.t1" not in listing(address)
    reply = held.do("READ", 0, 4096)
    assert reply.error == ERR["EIO"] and "t1" in reply.message
    assert RawClient(address).connect("lun0.t3").read(0, 512) == bytes(512)


def test_requests_after_the_controller_closed_get_eshutdown():
    """Even past the front end's own ESHUTDOWN gate, a closed controller's refusal is an answer."""
    import asyncio

    from splitpoint.firmware.frontend.nbd import NbdConnection
    from splitpoint.firmware.frontend.service import FrontEnd

    async def scenario():
        ctl = Controller.from_config(config.loads(CONFIG))
        fe = FrontEnd(ctl)
        conn, transport = NbdConnection(fe), _Transport()
        conn.connection_made(transport)
        name = b"lun0"
        conn.data_received(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054, 7, 6 + len(name))
                           + struct.pack(">I", len(name)) + name + b"\0\0")
        ctl.close()
        mark = len(transport.out)
        conn.data_received(struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512)
                           + struct.pack(">IHHQQI", 0x25609513, 0, 1, 2, 0, 512) + bytes(512)
                           + struct.pack(">IHHQQI", 0x25609513, 0, 3, 3, 0, 0))
        fe._tick()
        return bytes(transport.out[mark:])

    out = asyncio.run(scenario())
    replies = [struct.unpack_from(">IIQ", out, i) for i in range(0, len(out), 16)]
    assert sorted(cookie for _, _, cookie in replies) == [1, 2, 3]
    assert all(error == ERR["ESHUTDOWN"] for _, error, _ in replies)


def test_every_lun_of_the_configuration_is_exported():
    two = CONFIG + """
[[lun]]
name = "data1"
url = "ram://data1?size=4M&block=4096"
[lun.pool]
members = ["ram://d0?size=4M&block=4096", "ram://d1?size=4M&block=4096"]
"""
    ctl = Controller.from_config(config.loads(two))
    with ServiceThread(ctl, listen=("127.0.0.1", 0), control=False) as service:
        host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
        address = (host, int(port))
        names = listing(address)
        assert {"lun0", "lun0.trigger", "data1", "data1.trigger", "trigger"} <= set(names)
        d = RawClient(address).connect("data1")
        assert d.size == 4 * MiB
        assert d.do("READ", 512, 512).error == ERR["EINVAL"]          # its minimum block is 4096
        d.write(4096, b"\x44" * 4096)
        RawClient(address).connect("data1.trigger").write(8192, b"\x45" * 4096)
        backup = RawClient(address).connect("data1.t1")
        assert backup.read(4096, 8192) == b"\x44" * 4096 + b"\x45" * 4096
        assert "lun0.t1" not in listing(address)      # the special path of data1 cuts data1 only
