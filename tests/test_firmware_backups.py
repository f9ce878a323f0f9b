"""BACKUPS and BACKUP_READ on both boards: the C firmware (cffi build) and the Python board over the model
answer every edge the same way, replay from the reply cache, and a board without a pool keeps no backups."""
import pytest

from splitpoint.boards.emulator import BoardEngine
from splitpoint.boards.firmware.cboard import CBoard
from splitpoint.hal import open_device, wire
from splitpoint.hal.wire import ErrorCode, Flag, MsgType
from tests.test_firmware_diff import (BLOCK, BOARD_ID, FEATURES, FIRMWARE, MAX_TRANSFER, SIZE, PythonBoard,
                                      replies)


@pytest.fixture
def boards():
    cb = CBoard(BOARD_ID, SIZE, BLOCK, 8, MAX_TRANSFER, FEATURES, FIRMWARE, chunk_size=4096, pool_members=3)
    pb = PythonBoard(3, 8)
    both = lambda m: (replies(cb.data_in(m.encode())), replies(pb.data_in(m.encode())))
    c, p = both(wire.Info(seq=5, session=0xB0B, first_seq=1))
    assert c == p and c[0][5].features == FEATURES | wire.Feature.BACKUPS
    for seq, msg in enumerate([wire.Write(offset=0, data=b"\x5A" * 4 * BLOCK), wire.Trigger(id=1, label="one"),
                               wire.Write(offset=BLOCK, data=b"\xA5" * BLOCK), wire.Trigger(id=2)], start=1):
        msg.seq = seq
        c, p = both(msg)
        assert c == p and c[0][0] == "ACK"
    yield both
    pb.close()


@pytest.mark.parametrize("trigger_id, offset, length, code", [
    (1, 0, MAX_TRANSFER + BLOCK, ErrorCode.TOO_LARGE),
    (9, 0, MAX_TRANSFER + BLOCK, ErrorCode.TOO_LARGE),         # the size is checked before the id
    (1, 0, 0, ErrorCode.MISALIGNED),
    (1, 100, BLOCK, ErrorCode.MISALIGNED),
    (1, SIZE - BLOCK, 2 * BLOCK, ErrorCode.OUT_OF_RANGE),
    (1, 2**64 - BLOCK, 2 * BLOCK, ErrorCode.OUT_OF_RANGE),      # offset + length overflows
    (9, 0, BLOCK, ErrorCode.NO_BACKUP),
    (0, 0, BLOCK, ErrorCode.NO_BACKUP),
    (2**64 - 1, SIZE, BLOCK, ErrorCode.OUT_OF_RANGE),           # the range is checked before the id
])
def test_bad_backup_reads_get_the_same_error_from_both(boards, trigger_id, offset, length, code):
    c, p = boards(wire.BackupRead(seq=5, trigger_id=trigger_id, offset=offset, length=length))
    assert c == p == [("ERROR", 5, 0, MsgType.BACKUP_READ, code)]


def test_list_and_read_then_a_duplicate_is_replayed_not_rerun(boards):
    c, p = boards(wire.BackupList(seq=5))
    assert c == p
    entries = wire.unpack_backups(c[0][4])
    assert [(e.trigger_id, e.label) for e in entries] == [(1, "one"), (2, "")]
    read = wire.BackupRead(seq=6, trigger_id=1, offset=0, length=2 * BLOCK)
    c, p = boards(read)
    assert c == p and c[0][4] == b"\x5A" * 2 * BLOCK
    c2, p2 = boards(read)
    assert c2 == p2 == [("ACK", 6, int(Flag.REPLAY), MsgType.BACKUP_READ, b"\x5A" * 2 * BLOCK, None)]
    c, p = boards(wire.BackupRead(seq=7, trigger_id=2, offset=0, length=2 * BLOCK))
    assert c == p and c[0][4] == b"\x5A" * BLOCK + b"\xA5" * BLOCK


def test_boards_without_a_pool_keep_no_backups():
    cb = CBoard(BOARD_ID, SIZE, BLOCK, 8, MAX_TRANSFER, FEATURES, FIRMWARE, pool_members=0)
    pe = BoardEngine(open_device(f"ram://?size={SIZE}&block={BLOCK}"), BOARD_ID, 8, MAX_TRANSFER, FEATURES, FIRMWARE)
    hello = wire.Info(seq=5, session=7, first_seq=1)
    c = replies(cb.data_in(hello.encode()))
    p = replies(b"".join(m.encode() for m in pe.on_frame(wire.frame.decode_frame(hello.encode()))))
    assert c == p and not c[0][5].features & wire.Feature.BACKUPS
    for msg in (wire.BackupList(seq=1), wire.BackupRead(seq=2, trigger_id=1, offset=0, length=BLOCK)):
        c = replies(cb.data_in(msg.encode()))
        p = replies(b"".join(m.encode() for m in pe.on_frame(wire.frame.decode_frame(msg.encode()))))
        assert c == p == [("ERROR", msg.seq, 0, msg.type, ErrorCode.UNKNOWN_TYPE)]
