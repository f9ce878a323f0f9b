"""The hardware-in-the-loop cases that take a board URL (tests/test_hil.py), unchanged, against the C
firmware: its host build behind ptys, and the lm3s6965evb port under QEMU with an SD card image as its
medium (the port's SD-over-SPI driver)."""
import shutil

import pytest

from splitpoint.boards.firmware.cboard import CBoard
from splitpoint.boards.firmware.pty_link import CBoardLink
from splitpoint.boards.schema import load_board
from tests.test_hil import test_pipelined_submissions_complete_in_order  # noqa: F401  (the suite's own cases)
from tests.test_hil import test_random_data_round_trip  # noqa: F401

pytestmark = pytest.mark.xdist_group("qemu")
HAVE_QEMU = bool(shutil.which("qemu-system-arm") and shutil.which("arm-none-eabi-gcc"))


@pytest.fixture(params=["cffi", pytest.param("qemu-sd", marks=pytest.mark.skipif(
    not HAVE_QEMU, reason="qemu-system-arm / gcc-arm-none-eabi missing: `make firmware` installs them"))])
def board_url(request, tmp_path):
    link = str(tmp_path / "board")
    if request.param == "cffi":
        board = CBoardLink(CBoard.from_definition(load_board("emu-usb-fs"), capacity=8 << 20), link).start()
        yield f"board://emu-usb-fs?port={link}&rto=0.05&rate=200M&retries=16"
    else:
        from splitpoint.boards.firmware.qemu import QemuBoard, build

        image = tmp_path / "sd.img"
        with open(image, "wb") as fh:
            fh.truncate(16 << 20)            # 16 MiB card: a 2 MiB primary and three 2 MiB regions
        board = QemuBoard(build("emu-uart-3m"), link, sd_image=str(image)).start()
        yield f"board://emu-uart-3m?port={link}&rto=0.3&retries=16"
    board.stop()
