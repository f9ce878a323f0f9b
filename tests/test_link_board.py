"""A board running the firmware is a device too: the mirror path forwards each TRIGGER to it as a frame.

The Python board records every wire TRIGGER in sequence (``on_trigger``, called on the board's
side once every request before it has run). With a board as the primary backup LUN, and as a pool
member, each TRIGGER cut on the controller reaches the board at exactly its place in the stream:
the board's bytes at that moment are the primary's at the cut. One the controller could not cut
exactly there is sent MISSED, and the board does not record it as a TRIGGER.
"""
from __future__ import annotations

import time

import pytest

from splitpoint import config
from splitpoint.boards.emulator import Emulator
from splitpoint.boards.schema import load_board
from splitpoint.firmware.controller import Controller
from splitpoint.hal import open_device

BOARD = "emu-usb-fs"
FAST = "rto=0.05&rate=200M&retries=16"
SIZE = 1 << 20


@pytest.fixture
def board(tmp_path):
    """(emulator, URL, cuts): the board's storage at each wire TRIGGER it recorded, in order."""
    b = load_board(BOARD)
    storage = open_device(f"ram://?size={SIZE}&block={b.block_size}")
    cuts = []
    emu = Emulator(b, str(tmp_path / "link"), storage, rate=0, seed=1,
                   on_trigger=lambda tid, label, seq: cuts.append((tid, label, storage.read(0, SIZE)))).start()
    yield emu, f"board://{BOARD}?port={tmp_path / 'link'}&{FAST}", cuts
    emu.stop()


def controller(toml: str) -> Controller:
    ctl = Controller.from_config(config.loads(toml))
    ctl.start()
    return ctl


def test_board_as_primary_backup_lun_gets_every_trigger_in_sequence(board):
    emu, url, cuts = board
    block = load_board(BOARD).block_size
    ctl = controller(f'[[lun]]\nname = "lun0"\nurl = "ram://p?size={SIZE}&block={block}"\n\n'
                     f'[lun.backup]\nurl = "{url}"\n')
    try:
        ctl.write("lun0", 0, b"A" * 4096)
        assert ctl.trigger("lun0", "one").id == 1
        ctl.write("lun0", 4096, b"B" * 4096)
        ctl.write("lun0", 0, b"C" * 4096)
        assert ctl.trigger("lun0", "two").id == 2
        primary = ctl.read("lun0", 0, SIZE)
    finally:
        ctl.close()
    assert [(tid, label) for tid, label, _ in cuts] == [(1, "one"), (2, "two")]
    first = bytearray(SIZE)
    first[0:4096] = b"A" * 4096
    assert cuts[0][2] == bytes(first)
    assert cuts[1][2] == primary
    assert len(emu.triggers) == 2


def test_a_trigger_the_controller_cannot_cut_exactly_reaches_the_board_as_missed(board):
    emu, url, cuts = board
    block = load_board(BOARD).block_size
    ctl = controller(f'[[lun]]\nname = "lun0"\nurl = "ram://p?size={SIZE}&block={block}"\n\n'
                     f'[lun.pool]\nmembers = ["{url}", "ram://b1?size={SIZE}&block={block}"]\n')
    try:
        ctl.write("lun0", 0, b"A" * 4096)
        ctl.trigger("lun0", "early")   # the board member is still resyncing: its cut completes later
    finally:
        ctl.close()
    assert cuts == [] and emu.triggers == []


def test_board_pool_member_records_its_cuts(board):
    emu, url, cuts = board
    block = load_board(BOARD).block_size
    ctl = controller(f'[[lun]]\nname = "lun0"\nurl = "ram://p?size={SIZE}&block={block}"\n\n'
                     f'[lun.pool]\nmembers = ["{url}", "ram://b1?size={SIZE}&block={block}", '
                     f'"ram://b2?size={SIZE}&block={block}"]\n')
    try:
        ctl.write("lun0", 0, b"A" * 4096)
        deadline = time.monotonic() + 30
        while ctl.status()["luns"][0]["pools"][0]["members"][0]["state"] != "active":   # resynced
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ctl.trigger("lun0", "one")   # cuts the board member (active first): frozen exactly, so not MISSED
        ctl.write("lun0", 0, b"B" * 4096)
        ctl.trigger("lun0", "two")   # cuts the RAM member: nothing for the board
        backups = {b.trigger_id: b for b in ctl.backups("lun0")}
    finally:
        ctl.close()
    assert [(tid, label) for tid, label, _ in cuts] == [(1, "one")]
    assert cuts[0][2][:4096] == b"A" * 4096
    assert backups[1].label == "one"   # the board member holds its own backup too
