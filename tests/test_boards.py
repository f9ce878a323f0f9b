"""Board definitions: every board.toml validates; the schema rejects what it must; detection by VID/PID."""
import copy
import json
import subprocess
import sys
import tomllib
from types import SimpleNamespace

import pytest

from splitpoint.boards import schema
from splitpoint.boards.schema import BoardDefinitionError


def test_every_board_loads_and_there_are_enough():
    boards = schema.all_boards()
    real = [b for b in boards if not b.emulated]
    emulated = [b for b in boards if b.emulated]
    assert len(real) >= 3 and len(emulated) >= 1
    for b in real:
        assert b.vid and b.pid and b.usb_id
    ids = {(b.vid, b.pid) for b in real}
    assert (0x2E8A, 0x000A) in ids and (0x0403, 0x6010) in ids and (0x0483, 0x5740) in ids
    uart = schema.load_board("emu-uart-3m")
    assert uart.link_rate == 300000 and uart.baud == 3000000 and uart.capacity == 64 << 20
    assert schema.load_board("emu-usb-fs").link_rate == 1000000


def _doc(board_id="emu-uart-3m"):
    with open(schema.load_board(board_id).path, "rb") as fh:
        return tomllib.load(fh)


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d["link"].update(parity="N"), "unknown key 'link.parity'"),
    (lambda d: d.update(extra={"a": 1}), "unknown table [extra]"),
    (lambda d: d.update(bridge="esp32"), "bridge = 'esp32' is not allowed; valid values: rp2040"),
    (lambda d: d["link"].update(kind="spi"), "link.kind = 'spi' is not allowed"),
    (lambda d: d.update(features=["flush", "warp"]), "features entry = 'warp'"),
    (lambda d: d["geometry"].update(block_size=520), "geometry.block_size = 520"),
    (lambda d: d["geometry"].update(window=64), "window = 64 must be 1..32"),
    (lambda d: d["geometry"].update(capacity="lots"), "geometry.capacity = 'lots'"),
    (lambda d: d["geometry"].update(capacity="reported"), "needs a geometry.capacity"),
    (lambda d: d["geometry"].update(max_transfer=1000), "max_transfer = 1000"),
    (lambda d: d["link"].update(rate=400000), "above what 3000000 baud carries"),
    (lambda d: d["link"].pop("baud"), "needs link.baud"),
    (lambda d: d["link"].update(rate="fast"), "link.rate = 'fast' must be a int"),
    (lambda d: d.pop("vendor"), "missing key vendor"),
    (lambda d: d.pop("geometry"), "missing table [geometry]"),
    (lambda d: d.update(usb={"vid": 1, "pid": 2}), "an emulated board has no [usb] table"),
    (lambda d: d.update(kind="real"), "goes with bridge"),
    (lambda d: d["channels"].pop("control_interface"), "go together"),
    (lambda d: d.update(firmware="one"), "firmware = 'one'"),
    (lambda d: d.update(id="Bad Id"), "id = 'Bad Id'"),
])
def test_schema_rejections_name_the_key(mutate, needle):
    doc = copy.deepcopy(_doc())
    mutate(doc)
    with pytest.raises(BoardDefinitionError) as info:
        schema.validate(doc, "boards/emu-uart-3m/board.toml")
    assert needle in str(info.value)


def test_real_board_needs_usb_ids_and_folder_must_match():
    doc = _doc("rp2040-sd-cdc")
    del doc["usb"]
    with pytest.raises(BoardDefinitionError, match=r"needs \[usb\]"):
        schema.validate(doc, "x/rp2040-sd-cdc/board.toml")
    with pytest.raises(BoardDefinitionError, match="differs from its folder"):
        schema.validate(_doc("rp2040-sd-cdc"), "x/other/board.toml")
    bad = _doc("rp2040-sd-cdc")
    bad["usb"]["vid"] = 0x10000
    with pytest.raises(BoardDefinitionError, match="16-bit"):
        schema.validate(bad, "x/rp2040-sd-cdc/board.toml")


def test_unknown_board_id_lists_known_ones(tmp_path):
    with pytest.raises(BoardDefinitionError, match="known boards: .*emu-uart-3m"):
        schema.load_board("no-such-board")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "board.toml").write_text("id = \n")
    with pytest.raises(BoardDefinitionError, match="not valid TOML"):
        schema.load_board("broken", root=str(tmp_path))


def _port(device, vid, pid, location=None, serial=None):
    return SimpleNamespace(device=device, vid=vid, pid=pid, location=location, serial_number=serial,
                           description="test port")


def test_detect_by_vid_pid_and_interface_roles():
    ports = [
        _port("/dev/ttyACM0", 0x2E8A, 0x000A, "1-1:1.0", "E66"),
        _port("/dev/ttyACM1", 0x2E8A, 0x000A, "1-1:1.2", "E66"),
        _port("/dev/ttyUSB0", 0x0403, 0x6010, "1-2:1.0"),
        _port("/dev/ttyUSB1", 0x0403, 0x6010, "1-2:1.1"),
        _port("/dev/ttyACM2", 0x0483, 0x5740),
        _port("/dev/ttyS0", None, None),
        _port("/dev/ttyACM3", 0x1234, 0x5678, "1-3:1.0"),
    ]
    found = {(a.board.id, a.device, a.role) for a in schema.detect(ports)}
    assert found == {
        ("rp2040-sd-cdc", "/dev/ttyACM0", "data"), ("rp2040-sd-cdc", "/dev/ttyACM1", "control"),
        ("ft2232h-stm32-sd", "/dev/ttyUSB0", "data"), ("ft2232h-stm32-sd", "/dev/ttyUSB1", "control"),
        ("blackpill-f411-cdc", "/dev/ttyACM2", "unknown"),
    }


def test_boards_command_lists_and_shows():
    run = lambda *a: subprocess.run([sys.executable, "-m", "splitpoint", "boards", *a], capture_output=True,
                                    text=True)
    out = run("--no-detect")
    assert out.returncode == 0
    for b in schema.board_ids():
        assert b in out.stdout
    assert "0403:6010" in out.stdout
    doc = json.loads(run("--json").stdout)
    assert {b["id"] for b in doc["boards"]} == set(schema.board_ids()) and "attached" in doc
    shown = run("ft2232h-stm32-sd", "--no-detect")
    assert "baud" in shown.stdout and "3000000" in shown.stdout
    bad = run("nope")
    assert bad.returncode != 0 and "known boards" in bad.stderr
    assert "VID/PID" in run("--help").stdout
