"""A backup pool whose members live on emulated boards, end to end through the controller."""
import random

import pytest

from splitpoint.boards.schema import load_board
from splitpoint.config import loads
from splitpoint.boards.emulator import Emulator
from splitpoint.firmware.controller import Controller
from splitpoint.hal import open_device

SIZE = 2 << 20
FAST = "rto=0.05&rate=200M&retries=16"  # host timers for an unlimited emulated link; with backoff ~6 s before giving up, so a loaded CI machine is not a dead board


@pytest.fixture
def boards(tmp_path):
    """Three emulated boards (one with a lossy link) and their board:// URLs."""
    emus, urls = [], []
    for i, faults in enumerate([None, "drop=1%,corrupt=1%,duplicate=1%,reorder=1%", None]):
        link = str(tmp_path / f"member{i}")
        emu = Emulator(load_board("emu-usb-fs"), link, open_device(f"ram://m{i}?size={SIZE}&block=512"),
                       faults=faults, rate=0, seed=i + 1).start()
        emus.append(emu)
        urls.append(f"board://emu-usb-fs?port={link}&{FAST}")
    yield emus, urls
    for emu in emus:
        emu.stop()


def test_pool_on_emulated_boards_cuts_point_in_time_backups(boards):
    emus, urls = boards
    members = ", ".join(f'"{u}"' for u in urls)
    cfg = loads(f'[[lun]]\nname = "lun0"\nurl = "ram://lun0?size={SIZE}&block=512"\n\n'
                f'[lun.pool]\nmirror = "sync"\nmembers = [{members}]\n')
    ctl = Controller.from_config(cfg)
    lun = ctl.luns["lun0"]
    rng = random.Random(1)
    image = bytearray(SIZE)
    snapshots = {}
    try:
        for cut in range(1, 4):  # three cuts rotate through all three boards
            for _ in range(40):
                off = rng.randrange(0, SIZE // 4096) * 4096
                data = rng.randbytes(4096)
                ctl.write(lun, off, data)
                image[off:off + 4096] = data
            result = ctl.trigger(lun, label=f"cut{cut}")
            snapshots[result.id] = bytes(image)
        ctl.settle()   # board I/O runs off the loop: cuts complete once the boards have taken it
        backups = ctl.backups(lun)
        assert backups, "no consistent backup was reported"
        for info in backups:
            assert ctl.read_backup(lun, info.trigger_id, 0, SIZE) == snapshots[info.trigger_id]
        ctl.settle()    # digests first: a pending one verifies as pending
        results = ctl.verify(lun)
        assert results and all(r.ok for r in results), results
        assert {b.label for b in backups} <= {"cut1", "cut2", "cut3"}
        assert ctl.read(lun, 0, SIZE) == bytes(image)
    finally:
        ctl.close()
    assert sum(e.stats["executed"] for e in emus) > 100  # the boards did the mirroring
    assert sum(sum(e.rx_chain.counts().values()) + sum(e.tx_chain.counts().values()) for e in emus) > 0
