"""The C firmware's host build behind ptys, driven by the real host side: ``board://`` over pyserial,
the control channel, and TRIGGER frames that cut and rotate the board's own pool."""
import json
import os
import random

import pytest
import serial

from splitpoint.boards.firmware.cboard import CBoard
from splitpoint.boards.firmware.pty_link import CBoardLink
from splitpoint.boards.schema import load_board
from splitpoint.hal import open_device
from tests.reference import TRIGGER, WRITE, ReferenceLun

BOARD = "emu-usb-fs"
FAST = "rto=0.05&rate=200M&retries=16"
SIZE = 2 << 20


@pytest.fixture
def c_board(tmp_path):
    """(CBoardLink, board URL) of a C board with a 2 MiB primary and a pool of 3."""
    link = CBoardLink(CBoard.from_definition(load_board(BOARD), capacity=SIZE, pool_members=3),
                      str(tmp_path / "cboard")).start()
    yield link, f"board://{BOARD}?port={link.link_path}&{FAST}"
    link.stop()


def test_random_data_round_trip_through_pyserial(c_board):
    link, url = c_board
    rng = random.Random(7)
    ref = bytearray(SIZE)
    with open_device(url) as dev:
        assert dev.info.board_id == BOARD and dev.size == SIZE
        for _ in range(60):
            n = rng.choice((4096, 16384, 65536))
            off = rng.randrange(0, (SIZE - n) // 512 + 1) * 512
            data = rng.randbytes(n)
            dev.write(off, data)
            ref[off:off + n] = data
        assert dev.read(0, SIZE) == bytes(ref)
        dev.write_zeroes(0, 65536, fua=True)
        dev.trim(65536, 4096)
        dev.flush()
        ref[0:65536 + 4096] = bytes(65536 + 4096)
        assert dev.read(0, SIZE) == bytes(ref)
    with link.lock:
        assert link.board.primary() == bytes(ref)


def test_pipelined_submissions_complete_in_order(c_board):
    _, url = c_board
    with open_device(url) as dev:
        blocks = [os.urandom(4096) for _ in range(64)]
        pend = [dev.submit_write(i * 4096, b) for i, b in enumerate(blocks)]
        for p in pend:
            assert p.result(30) is None
        reads = [dev.submit_read(i * 4096, 4096) for i in range(64)]
        assert [r.result(30) for r in reads] == blocks


def test_control_channel_on_the_second_pty(c_board):
    link, url = c_board
    with open_device(url) as dev:
        dev.write(0, b"\x5a" * 4096)
        with serial.serial_for_url(link.control_path, timeout=5) as ctl:
            ctl.write(b"PING\r\nTRIGGER from the line\n")
            assert ctl.readline() == b"PONG\n"
            assert ctl.readline().startswith(b"OK 1 seq=")
            ctl.write(b"STATUS\n")
            status = json.loads(ctl.readline())
    assert status["triggers"] == 1 and status["backups"][0]["label"] == "from the line"
    with link.lock:
        assert link.board.read_backup(1, 0, 4096) == b"\x5a" * 4096


def test_trigger_frames_in_sequence_with_the_writes_cut_the_boards_own_pool(c_board):
    """The host's TRIGGER crosses the wire as a frame in sequence with its pipelined writes; the board
    freezes a region at exactly that point and rotates its own pool; every region it keeps equals the
    reference replay."""
    link, url = c_board
    rng = random.Random(5)
    ref = ReferenceLun(SIZE)
    with open_device(url) as dev:
        for cut in range(1, 6):
            pend = []
            for _ in range(30):
                off = rng.randrange(0, SIZE // 4096) * 4096
                data = rng.randbytes(4096)
                pend.append(dev.submit_write(off, data))
                ref.apply(WRITE, off, data)
            dev.trigger(cut, f"cut{cut}")      # queued behind the writes still in flight
            ref.apply(TRIGGER)
            assert all(p.result(30) is None for p in pend)
        assert dev.read(0, SIZE) == bytes(ref.data)
    with link.lock:
        status = link.board.status()
        backups = link.board.backups()
    assert status["triggers"] == 5 and status["pool"]["rotations"] == 5
    assert [(b["trigger_id"], b["label"]) for b in backups] == [(4, "cut4"), (5, "cut5")]
    with link.lock:
        for b in backups:
            assert link.board.read_backup(b["trigger_id"]) == ref.snapshot(b["trigger_id"])
        assert link.board.primary() == bytes(ref.data)


def test_host_lists_and_reads_the_boards_backups_over_the_wire(c_board):
    """BACKUPS and BACKUP_READ through board://: the list the board keeps (ids, labels, digests) and each
    backup's bytes, pipelined in max_transfer pieces, equal to the reference replay."""
    from splitpoint.hal.board import BoardNoSuchBackupError
    from splitpoint.hal.wire import frame

    link, url = c_board
    rng = random.Random(9)
    ref = ReferenceLun(SIZE)
    with open_device(url) as dev:
        assert dev.backups() == []
        for cut in range(1, 5):
            for _ in range(20):
                off = rng.randrange(0, SIZE // 4096) * 4096
                data = rng.randbytes(4096)
                dev.write(off, data)
                ref.apply(WRITE, off, data)
            dev.trigger(cut, f"cut{cut}")
            ref.apply(TRIGGER)
        listed = dev.backups()
        with link.lock:
            held = link.board.backups()
        assert [(e.trigger_id, e.label, e.digest) for e in listed] == \
            [(b["trigger_id"], b["label"], b["digest"]) for b in held]
        assert sorted(e.trigger_id for e in listed) == [3, 4]   # one region mirrors: t1 and t2 were recycled
        for e in listed:
            whole = dev.read_backup(e.trigger_id, 0, SIZE)
            assert whole == ref.snapshot(e.trigger_id) and frame.crc32c(whole) == e.digest
            assert dev.read_backup(e.trigger_id, 8192, 4096) == ref.snapshot(e.trigger_id)[8192:12288]
        with pytest.raises(BoardNoSuchBackupError, match="no backup of TRIGGER 1"):
            dev.read_backup(1, 0, 4096)
        assert dev.read(0, SIZE) == bytes(ref.data)   # the session goes on after the error


def test_a_board_without_a_pool_says_it_keeps_no_backups(tmp_path):
    from splitpoint.boards.emulator import Emulator
    from splitpoint.hal.board import BoardBackupsUnsupportedError

    board = load_board(BOARD)
    link = str(tmp_path / "emu")
    emu = Emulator(board, link, open_device(f"ram://?size=1M&block={board.block_size}"), rate=0, seed=1).start()
    try:
        with open_device(f"board://{BOARD}?port={link}&{FAST}") as dev:
            with pytest.raises(BoardBackupsUnsupportedError, match="keeps no backups"):
                dev.backups()
            with pytest.raises(BoardBackupsUnsupportedError):
                dev.read_backup(1, 0, 512)
    finally:
        emu.stop()


def test_emulate_cffi_command_runs_until_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    link = str(tmp_path / "board")
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", "--cffi", BOARD, "--link", link],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.lexists(link) and os.path.lexists(link + ".control")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        with open_device(f"board://{BOARD}?port={link}&{FAST}") as dev:
            assert dev.size == 64 << 20              # the board definition's capacity
            dev.write(4096, b"\x09" * 4096)
            assert dev.read(4096, 4096) == b"\x09" * 4096
        with serial.serial_for_url(link + ".control", timeout=5) as ctl:
            ctl.write(b"TRIGGER by hand\n")
            assert ctl.readline().startswith(b"OK 1 seq=")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "C firmware, host build" in out and not os.path.lexists(link)


def test_emulate_refuses_both_firmware_runners(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "splitpoint", "emulate", "--cffi", "--qemu", BOARD, "--link",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode != 0 and "choose one" in out.stderr
