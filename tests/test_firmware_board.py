"""The C firmware as a board (cffi host build): sessions, the control channel, the pool and its medium."""
import json

import pytest

from splitpoint.boards.firmware.cboard import CBoard, FirmwareConfigError
from splitpoint.boards.schema import load_board
from splitpoint.hal import wire
from splitpoint.hal.wire import ErrorCode, Flag, MsgType

BLOCK = 512


def frames(data: bytes) -> list:
    return [wire.decode_wire(c + b"\0") for c in data.split(b"\0")[:-1]]


def one(data: bytes):
    (msg,) = frames(data)
    return msg


def hello(board, session=0xABC, first_seq=1):
    return one(board.data_in(wire.Info(seq=9, session=session, first_seq=first_seq).encode()))


@pytest.fixture
def board():
    b = CBoard(capacity=64 << 10, chunk_size=4096, pool_members=3)
    assert hello(b).info.session == 0xABC
    return b


def write(board, seq, block, byte, n=1):
    return one(board.data_in(wire.Write(seq=seq, offset=block * BLOCK, data=bytes([byte]) * (n * BLOCK)).encode()))


def test_a_duplicate_write_is_replayed_never_applied_twice(board):
    first = write(board, 1, 0, 0x11)
    writes = board._ram.writes
    write(board, 2, 0, 0x22)                               # overwrites block 0
    again = write(board, 1, 0, 0x11)                       # a late duplicate of seq 1
    assert isinstance(again, wire.Ack) and again.flags & Flag.REPLAY and not first.flags & Flag.REPLAY
    assert board.primary(0, BLOCK) == b"\x22" * BLOCK       # seq 1 did not run again
    assert board._ram.writes == writes + 2                  # seq 2 on the primary and its mirror, nothing else
    read = one(board.data_in(wire.Read(seq=3, offset=0, length=BLOCK).encode()))
    replay = one(board.data_in(wire.Read(seq=3, offset=0, length=BLOCK).encode()))
    assert replay.data == read.data == b"\x22" * BLOCK and replay.flags & Flag.REPLAY


def test_stale_and_beyond_window_requests_get_their_errors(board):
    for seq in range(1, 12):                                # 11 executed: seq 1..3 fell out of an 8-reply cache
        assert isinstance(one(board.data_in(wire.Flush(seq=seq).encode())), wire.Ack)
    stale = one(board.data_in(wire.Flush(seq=2).encode()))
    assert (stale.code, stale.flags & Flag.REPLAY) == (ErrorCode.STALE, Flag.REPLAY)
    beyond = one(board.data_in(wire.Flush(seq=12 + 8).encode()))
    assert beyond.code == ErrorCode.WINDOW


def test_out_of_order_requests_wait_for_the_gap_and_run_in_seq_order(board):
    nak = one(board.data_in(wire.Write(seq=3, offset=0, data=b"\x33" * BLOCK).encode()))
    assert isinstance(nak, wire.Nak) and (nak.expected, nak.received) == (1, 0b10)
    assert board.data_in(wire.Write(seq=2, offset=0, data=b"\x22" * BLOCK).encode()) == b""   # one NAK per gap
    out = frames(board.data_in(wire.Write(seq=1, offset=0, data=b"\x11" * BLOCK).encode()))
    assert [m.seq for m in out] == [1, 2, 3]
    assert board.primary(0, BLOCK) == b"\x33" * BLOCK       # the last in seq order wins, not the last to arrive


def test_resume_keeps_the_session_and_a_new_one_starts_afresh(board):
    write(board, 1, 0, 0x44)
    resumed = hello(board, first_seq=500)
    assert resumed.flags & Flag.RESUMED and resumed.info.next_seq == 2
    assert write(board, 1, 0, 0x55).flags & Flag.REPLAY    # the reply cache survived the resume
    fresh = hello(board, session=0xDEF, first_seq=500)
    assert not fresh.flags & Flag.RESUMED and fresh.info.next_seq == 500
    assert one(board.data_in(wire.Flush(seq=1).encode())).code == ErrorCode.STALE   # the old session is gone


def test_session_zero_is_refused_and_requests_before_a_session_wait(board):
    b = CBoard(capacity=64 << 10, pool_members=1)
    assert one(b.data_in(wire.Flush(seq=1).encode())).code == ErrorCode.NO_SESSION
    err = one(b.data_in(wire.Info(seq=3, session=0, first_seq=1).encode()))
    assert (err.seq, err.of, err.code) == (3, MsgType.INFO, ErrorCode.BAD_PAYLOAD)


@pytest.mark.parametrize("msg, code", [
    (wire.Read(offset=0, length=0), ErrorCode.MISALIGNED),
    (wire.Read(offset=100, length=BLOCK), ErrorCode.MISALIGNED),
    (wire.Read(offset=(64 << 10) - BLOCK, length=2 * BLOCK), ErrorCode.OUT_OF_RANGE),
    (wire.Read(offset=2**64 - BLOCK, length=2 * BLOCK), ErrorCode.OUT_OF_RANGE),     # offset + length overflows
    (wire.Read(offset=0, length=32768), ErrorCode.TOO_LARGE),
    (wire.Write(offset=0, data=b""), ErrorCode.MISALIGNED),
    (wire.Trim(offset=0, length=2**32 - BLOCK), ErrorCode.OUT_OF_RANGE),
])
def test_bad_ranges_get_the_protocols_error(board, msg, code):
    msg.seq = 1
    err = one(board.data_in(msg.encode()))
    assert isinstance(err, wire.Error) and (err.of, err.code) == (msg.type, code)


def test_trim_and_zeroes_read_back_as_zeros_on_primary_and_mirror(board):
    write(board, 1, 0, 0x66, n=8)
    one(board.data_in(wire.Trim(seq=2, offset=0, length=2 * BLOCK).encode()))
    one(board.data_in(wire.Trim(seq=3, flags=Flag.ZEROES | Flag.FUA, offset=4 * BLOCK, length=BLOCK).encode()))
    want = bytes(2 * BLOCK) + b"\x66" * 2 * BLOCK + bytes(BLOCK) + b"\x66" * 3 * BLOCK
    assert board.primary(0, 8 * BLOCK) == board.region(0, 0, 8 * BLOCK) == want


def test_rotation_resyncs_only_the_chunks_written_since_a_member_was_frozen(board):
    chunk = 4096
    trig = iter(range(1, 100))
    seq = iter(range(1, 1000))

    def trigger():
        tid = next(trig)
        assert isinstance(one(board.data_in(wire.Trigger(seq=next(seq), id=tid).encode())), wire.Ack)
        return tid

    write(board, next(seq), 0, 1)             # chunk 0, epoch 1
    trigger()                                 # t1 on member 0; member 1 activated: chunk 0 copied
    assert board.status()["pool"]["resync_bytes"] == chunk
    write(board, next(seq), 8, 2)             # chunk 1
    trigger()                                 # t2 on member 1; member 2 activated: chunks 0 and 1 copied
    assert board.status()["pool"]["resync_bytes"] == 3 * chunk
    write(board, next(seq), 16, 3)            # chunk 2
    t3 = trigger()                            # t3 on member 2; member 0 (least recently active) gets chunks 1, 2
    st = board.status()
    assert st["pool"]["resync_bytes"] == 5 * chunk and st["pool"]["active"] == 0
    assert [b["trigger_id"] for b in board.backups()] == [2, 3]
    assert board.read_backup(t3, 0, 17 * BLOCK) == b"\x01" * BLOCK + bytes(7 * BLOCK) + b"\x02" * BLOCK + \
        bytes(7 * BLOCK) + b"\x03" * BLOCK
    assert board.region(0) == board.primary()            # the new mirror is in sync
    with pytest.raises(LookupError):
        board.read_backup(1)                             # recycled
    with pytest.raises(LookupError):
        board.read_backup(t3, 0, (64 << 10) + BLOCK)     # bounds checked by the firmware


def test_control_channel_speaks_the_controllers_grammar(board):
    assert board.control_line("PING") == "PONG"
    assert board.control_line("ping") == "PONG"
    assert board.control_line("") is None and board.control_line("  \r") is None
    write(board, 1, 0, 0x77)
    assert board.control_line("TRIGGER  nightly run ") == "OK 1 seq=2"    # ring seq: the write was 1
    assert [(b["trigger_id"], b["label"]) for b in board.backups()] == [(1, "nightly run")]
    one(board.data_in(wire.Trigger(seq=2, id=7, label="wire").encode()))
    assert board.control_line("TRIGGER") == "OK 8 seq=4"                 # ids continue past the host's
    # three members keep two backups: t1 (on member 0) was recycled as the new mirror
    assert [(b["trigger_id"], b["label"], b["member"]) for b in board.backups()] == [(7, "wire", 1), (8, "", 2)]
    assert board.control_line("TRIGGER ON lun1 x").startswith("ERR TRIGGER ON is not supported by board")
    assert board.control_line("TRIGGER " + "x" * 65) == "ERR label is 65 bytes; at most 64"
    assert board.control_line("PING now") == "ERR PING takes no argument"
    assert board.control_line("PIN lun0.t1") == "ERR PIN is not supported by board emu-usb-fs"
    assert board.control_line("FROB").startswith("ERR unknown command 'FROB'; commands: TRIGGER")
    assert board.control_in(b"\xff\xfe\n") == b"ERR line is not UTF-8\n"
    assert board.control_in(b"x" * 5000 + b"\nPING\n") == b"ERR line too long\nPONG\n"
    status = json.loads(board.control_line("STATUS"))
    assert status["triggers"] == 3 and status["pool"]["rotations"] == 3 and len(status["backups"]) == 2


def test_a_failing_medium_is_reported_and_the_member_never_becomes_a_backup():
    b = CBoard(capacity=64 << 10, chunk_size=4096, pool_members=2)
    hello(b)
    b.fail_medium_at(0)                                   # the primary's first byte
    err = write(b, 1, 0, 0x11)
    assert err.code == ErrorCode.IO
    b.fail_medium_at((64 << 10) + 5)                      # member 0's region: the mirror write fails
    assert isinstance(write(b, 2, 0, 0x22), wire.Ack)
    assert b.status()["pool"]["states"][0] == "inconsistent"
    b.fail_medium_at(None)
    one(b.data_in(wire.Trigger(seq=3, id=1).encode()))
    assert b.backups() == []                              # nothing consistent to freeze: no false backup
    one(b.data_in(wire.Trigger(seq=4, id=2).encode()))
    assert [x["trigger_id"] for x in b.backups()] == [2] and b.read_backup(2, 0, BLOCK) == b"\x22" * BLOCK


def test_a_pool_of_one_is_refreshed_and_cut_at_every_trigger():
    b = CBoard(capacity=64 << 10, pool_members=1)
    hello(b)
    for i in range(1, 4):
        write(b, 2 * i - 1, 0, i)
        one(b.data_in(wire.Trigger(seq=2 * i, id=i).encode()))
        assert [x["trigger_id"] for x in b.backups()] == [i] and b.read_backup(i, 0, BLOCK) == bytes([i]) * BLOCK


def test_board_definitions_load_into_the_firmware_and_bad_ones_are_refused():
    b = CBoard.from_definition(load_board("emu-usb-fs"), capacity=1 << 20)
    ack = hello(b)
    assert (ack.info.board_id, ack.info.window, ack.info.max_transfer) == ("emu-usb-fs", 8, 16384)
    with pytest.raises(FirmwareConfigError):
        CBoard(capacity=1000)                             # not a multiple of the block size
    with pytest.raises(FirmwareConfigError):
        CBoard(window=33)
    with pytest.raises(FirmwareConfigError):
        CBoard(board_id="x" * 33)


def test_status_json_escapes_labels_the_host_chose():
    b = CBoard(capacity=64 << 10, pool_members=2)
    hello(b)
    label = 'a"b\\c\x01é'
    one(b.data_in(wire.Trigger(seq=1, id=1, label=label).encode()))
    assert json.loads(b.control_line("STATUS"))["backups"][0]["label"] == label


def test_the_port_template_compiles_against_the_core(tmp_path):
    import os
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    root = os.path.join(os.path.dirname(__file__), "..", "boards", "firmware")
    out = subprocess.run([cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-c", "-I", os.path.join(root, "core"),
                          os.path.join(root, "ports", "template", "board.c"), "-o", str(tmp_path / "t.o")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_long_status_streams_whole_over_the_control_channel():
    """STATUS with seven backups under labels of control characters (escaped six bytes each) is far
    longer than the board's answer buffer: it still arrives as one line of valid JSON."""
    b = CBoard(capacity=64 << 10, pool_members=8)
    hello(b)
    for i in range(1, 10):
        one(b.data_in(wire.Trigger(seq=i, id=i, label="\x01" * 64).encode()))
    out = b.control_in(b"STATUS\n")
    assert len(out) > 3000 and out.endswith(b"\n") and out.count(b"\n") == 1
    status = json.loads(out)
    assert [x["trigger_id"] for x in sorted(status["backups"], key=lambda x: x["trigger_id"])] == list(range(3, 10))
    assert all(x["label"] == "\x01" * 64 for x in status["backups"])
    assert b.status() == status                     # the bounded API gives the same document


def test_control_lines_may_carry_nuls_and_unknown_verbs_are_echoed_safely(board):
    assert board.control_in(b"TRIGGER a\x00b\n").startswith(b"OK 1 seq=")
    assert board.backups()[0]["label"] == "a\x00b"
    out = board.control_in(b"\x01" + "é".encode() * 20 + b"\n").decode()   # valid UTF-8, cut at 32 bytes
    assert out.startswith("ERR unknown command '?" + "é" * 15 + "'") and "\x01" not in out
