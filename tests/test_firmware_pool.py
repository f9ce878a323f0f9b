"""A controller pool whose members are C firmware boards (host build behind ptys, reached by board://):
the controller's cuts are point-in-time backups on the boards' primaries, end to end."""
import random

import pytest

from splitpoint.boards.firmware.cboard import CBoard
from splitpoint.boards.firmware.pty_link import CBoardLink
from splitpoint.boards.schema import load_board
from splitpoint.config import loads
from splitpoint.firmware.controller import Controller

SIZE = 2 << 20
FAST = "rto=0.05&rate=200M&retries=16"


@pytest.fixture
def c_boards(tmp_path):
    links = [CBoardLink(CBoard.from_definition(load_board("emu-usb-fs"), capacity=SIZE, pool_members=1),
                        str(tmp_path / f"member{i}")).start() for i in range(3)]
    yield links, [f"board://emu-usb-fs?port={link.link_path}&{FAST}" for link in links]
    for link in links:
        link.stop()


def test_pool_on_c_boards_cuts_point_in_time_backups(c_boards):
    links, urls = c_boards
    members = ", ".join(f'"{u}"' for u in urls)
    ctl = Controller.from_config(loads(f'[[lun]]\nname = "lun0"\nurl = "ram://lun0?size={SIZE}&block=512"\n\n'
                                       f'[lun.pool]\nmirror = "sync"\nmembers = [{members}]\n'))
    lun = ctl.luns["lun0"]
    rng = random.Random(4)
    image = bytearray(SIZE)
    snapshots = {}
    try:
        for cut in range(1, 5):          # four cuts rotate through the three boards
            for _ in range(40):
                off = rng.randrange(0, SIZE // 4096) * 4096
                data = rng.randbytes(4096)
                ctl.write(lun, off, data)
                image[off:off + 4096] = data
            snapshots[ctl.trigger(lun, label=f"cut{cut}").id] = bytes(image)
        ctl.settle()
        backups = ctl.backups(lun)
        assert {b.trigger_id for b in backups} == {3, 4}
        for info in backups:
            assert ctl.read_backup(lun, info.trigger_id, 0, SIZE) == snapshots[info.trigger_id]
        ctl.settle()
        results = ctl.verify(lun)
        assert results and all(r.ok for r in results), results
        assert ctl.read(lun, 0, SIZE) == bytes(image)
    finally:
        ctl.close()
    for link in links:                   # the boards did the mirroring: each executed requests of its own
        with link.lock:
            assert link.board.status()["stats"]["executed"] > 10
