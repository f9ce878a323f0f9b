"""The C firmware's ports under qemu-system-arm (lm3s6965evb; stm32f411 on netduinoplus2), through the
real host side: board:// over the data UART's pty, the control channel on the second UART, TRIGGER
frames that rotate the board's own pool (checked against the reference replay by the manifests'
digests), the lm3s6965evb port's SD card medium, and `splitpoint emulate --qemu`."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import serial

from splitpoint.hal import open_device
from splitpoint.pyx import frame_py
from tests.reference import TRIGGER, WRITE, ReferenceLun

BOARD = "emu-uart-3m"
URL_OPTS = "rto=0.3&retries=16"
#: port -> (QEMU machine, the primary in SRAM, max_transfer, window)
PORTS = {"lm3s6965evb": ("lm3s6965evb", 4096, 4096, 2), "stm32f411": ("netduinoplus2", 16384, 4096, 4)}
SIZE = PORTS["lm3s6965evb"][1]

pytestmark = [pytest.mark.xdist_group("qemu"),
              pytest.mark.skipif(not (shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc")),
                                 reason="qemu-system-arm / gcc-arm-none-eabi missing: `make firmware` installs them")]


@pytest.fixture(scope="module")
def elf():
    from splitpoint.boards.firmware.qemu import build

    return build(BOARD, "lm3s6965evb")


@pytest.fixture(params=sorted(PORTS))
def qemu_board(request, tmp_path):
    """(QemuBoard, board URL, its SRAM primary size) for each port."""
    from splitpoint.boards.firmware.qemu import QemuBoard, build

    machine, size, _, _ = PORTS[request.param]
    board = QemuBoard(build(BOARD, request.param), str(tmp_path / "qemu"), machine=machine).start()
    board.size = size
    board.port = request.param
    yield board, f"board://{BOARD}?port={board.link_path}&{URL_OPTS}"
    board.stop()


def control(board, *lines):
    with serial.serial_for_url(board.control_path, timeout=10) as ctl:
        answers = []
        for line in lines:
            ctl.write(line.encode() + b"\n")
            answers.append(ctl.readline().decode().rstrip("\n"))
        return answers


def test_round_trip_and_ranges(qemu_board):
    board, url = qemu_board
    SIZE = board.size
    rng = random.Random(1)
    ref = bytearray(SIZE)
    with open_device(url) as dev:
        assert (dev.info.board_id, dev.size, dev.info.max_transfer, dev.info.window) == (BOARD,) + PORTS[board.port][1:]
        pend = []
        for _ in range(40):
            off = rng.randrange(0, SIZE // 512) * 512
            n = min(rng.choice((512, 1024)), SIZE - off)
            data = rng.randbytes(n)
            pend.append(dev.submit_write(off, data))
            ref[off:off + n] = data
        assert all(p.result(30) is None for p in pend)
        assert dev.read(0, SIZE) == bytes(ref)
        dev.write_zeroes(0, 2048, fua=True)
        dev.trim(3072, 512)
        ref[0:2048] = bytes(2048)
        ref[3072:3584] = bytes(512)
        assert dev.read(0, SIZE) == bytes(ref)


def test_trigger_frames_rotate_the_boards_pool_at_exactly_their_point(qemu_board):
    board, url = qemu_board
    SIZE = board.size
    rng = random.Random(2)
    ref = ReferenceLun(SIZE)
    with open_device(url) as dev:
        for cut in range(1, 5):
            pend = []
            for _ in range(12):
                off = rng.randrange(0, SIZE // 512) * 512
                data = rng.randbytes(512)
                pend.append(dev.submit_write(off, data))
                ref.apply(WRITE, off, data)
            dev.trigger(cut, f"cut{cut}")
            ref.apply(TRIGGER)
            assert all(p.result(30) is None for p in pend)
        # over the wire too: the list the firmware keeps and each backup's bytes (BACKUPS, BACKUP_READ)
        listed = {e.trigger_id: e for e in dev.backups()}
        assert sorted(listed) == [3, 4]
        for tid, e in listed.items():
            assert e.label == f"cut{tid}" and dev.read_backup(tid, 0, SIZE) == ref.snapshot(tid)
            assert e.digest == frame_py.crc32c(ref.snapshot(tid))
        (line,) = control(board, "STATUS")
    status = json.loads(line)
    assert status["triggers"] == 4 and status["pool"]["rotations"] == 4
    kept = {b["trigger_id"]: b for b in status["backups"]}
    assert sorted(kept) == [3, 4]
    for tid, b in kept.items():   # the region's CRC32C, taken by the firmware at the cut
        assert b["label"] == f"cut{tid}" and int(b["digest"], 16) == frame_py.crc32c(ref.snapshot(tid))


def test_control_channel_answers_in_the_controllers_grammar(qemu_board):
    board, url = qemu_board
    SIZE = board.size
    with open_device(url) as dev:
        dev.write(0, b"\x42" * 512)
        ping, trig, bad = control(board, "PING", "TRIGGER from qemu", "TRIGGER ON lun1")
    assert ping == "PONG" and trig.startswith("OK 1 seq=")
    assert bad == f"ERR TRIGGER ON is not supported by board {BOARD}: it has one LUN"
    (line,) = control(board, "STATUS")
    b = json.loads(line)["backups"][0]
    assert b["label"] == "from qemu"
    assert int(b["digest"], 16) == frame_py.crc32c(b"\x42" * 512 + bytes(SIZE - 512))


def test_emulate_qemu_command_runs_until_sigterm(tmp_path):
    link = str(tmp_path / "board")
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", "--qemu", BOARD, "--link", link],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (os.path.lexists(link) and os.path.lexists(link + ".control")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        with open_device(f"board://{BOARD}?port={link}&{URL_OPTS}") as dev:
            dev.write(512, b"\x07" * 512)
            assert dev.read(512, 512) == b"\x07" * 512
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "C firmware" in out and not os.path.lexists(link)


def test_sd_card_medium_keeps_the_primary_across_a_restart(elf, tmp_path):
    """With an SD image the port keeps its regions on the card (SD over SPI): what the host wrote is in
    the image at the primary's offsets, and a restarted board serves it again."""
    from splitpoint.boards.firmware.qemu import QemuBoard

    image = tmp_path / "sd.img"
    with open(image, "wb") as fh:
        fh.truncate(16 << 20)
    data = random.Random(3).randbytes(8192)
    with QemuBoard(elf, str(tmp_path / "a"), sd_image=str(image)) as board:
        with open_device(f"board://{BOARD}?port={board.link_path}&{URL_OPTS}") as dev:
            assert dev.size == 2 << 20              # 16 MiB over a primary and three regions, capped by the map
            dev.write(1 << 20, data, fua=True)
    with open(image, "rb") as fh:
        fh.seek(1 << 20)
        assert fh.read(len(data)) == data            # region 0 of the card is the primary
    with QemuBoard(elf, str(tmp_path / "b"), sd_image=str(image)) as board:
        with open_device(f"board://{BOARD}?port={board.link_path}&{URL_OPTS}") as dev:
            assert dev.read(1 << 20, len(data)) == data


def test_emulate_qemu_runs_the_black_pill_on_its_stm32f4_port(tmp_path):
    link = str(tmp_path / "bp")
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", "--qemu", "blackpill-f411-cdc", "--link",
                             link], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.lexists(link + ".control"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.1)
        with open_device(f"board://blackpill-f411-cdc?port={link}&{URL_OPTS}") as dev:
            assert dev.info.board_id == "blackpill-f411-cdc" and dev.size == PORTS["stm32f411"][1]
            dev.write(0, b"\x0b" * 4096)
            assert dev.read(0, 4096) == b"\x0b" * 4096
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "netduinoplus2" in out, out
