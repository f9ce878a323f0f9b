"""`splitpoint flash`: the [flash] recipe of every board, its dry run, its errors, and a run with stand-in tools."""
import copy
import os
import stat
import struct
import sys
import tomllib

import pytest
from click.testing import CliRunner

from splitpoint.boards import flash, schema, uf2
from splitpoint.boards.schema import BoardDefinitionError
from splitpoint.cli import main

PY = sys.executable


def _run(*args, **kw):
    return CliRunner().invoke(main, ["flash", *args], catch_exceptions=False, **kw)


def _doc(board_id):
    with open(schema.load_board(board_id).path, "rb") as fh:
        return tomllib.load(fh)


def test_every_real_board_has_a_recipe_and_every_emulated_one_none():
    for b in schema.all_boards():
        assert b.flash is not None, b.id
        assert (b.flash.tool == "none") == b.emulated, b.id
    bp = schema.load_board("blackpill-f411-cdc").flash
    assert (bp.tool, bp.vid, bp.pid, bp.address) == ("dfu-util", 0x0483, 0xDF11, 0x08000000)
    assert schema.load_board("rp2040-sd-cdc").flash.volume == "RPI-RP2"


@pytest.mark.parametrize("board_id,firmware,port,lines", [
    ("blackpill-f411-cdc", "/fw/a.elf", None, [
        "arm-none-eabi-objcopy -O binary /fw/a.elf /fw/a.bin",
        "dfu-util -d 0483:df11 -a 0 -s 0x08000000:leave -D /fw/a.bin"]),
    ("blackpill-f411-cdc", "/fw/a.bin", "1-1.4", ["dfu-util -d 0483:df11 -a 0 -p 1-1.4 -s 0x08000000:leave -D /fw/a.bin"]),
    ("rp2040-sd-cdc", "/fw/a.elf", "/media/u/RPI-RP2", [
        "arm-none-eabi-objcopy -O binary /fw/a.elf /fw/a.bin",
        f"{PY} -m splitpoint.boards.uf2 /fw/a.bin /fw/a.uf2 --address 0x10000000 --family rp2040",
        "cp /fw/a.uf2 /media/u/RPI-RP2/"]),
    ("rp2040-sd-cdc", "/fw/a.uf2", "/mnt/pico/", ["cp /fw/a.uf2 /mnt/pico/"]),
    ("teensy41-sd", "/fw/a.elf", None, [
        "arm-none-eabi-objcopy -O ihex /fw/a.elf /fw/a.hex", "teensy_loader_cli --mcu=TEENSY41 -w -v /fw/a.hex"]),
    ("ft2232h-stm32-sd", "/fw/a.elf", "0671FF", [
        "openocd -f interface/stlink.cfg -f target/stm32f4x.cfg -c 'adapter serial 0671FF' "
        "-c 'program /fw/a.elf verify reset exit'"]),
])
def test_dry_run_prints_the_exact_commands(board_id, firmware, port, lines):
    out = _run(board_id, "--dry-run", "--firmware", firmware, *(["--port", port] if port else []))
    assert out.exit_code == 0, out.output
    assert out.output.splitlines() == lines


def test_pyocd_recipe_plans_its_command():
    recipe = schema.validate_recipe({"tool": "pyocd", "target": "stm32f411ce"}, pytest.fail)
    assert flash.plan("b", recipe, "/fw/a.hex", "0669FF") == [["pyocd", "flash", "-t", "stm32f411ce", "-u", "0669FF",
                                                              "/fw/a.hex"]]


def test_dry_run_without_firmware_builds_the_boards_port_first():
    out = _run("blackpill-f411-cdc", "--dry-run")
    assert out.exit_code == 0
    make, objcopy, dfu = out.output.splitlines()
    port = os.path.join(os.path.dirname(flash.__file__), "firmware", "ports", "stm32f411")
    elf = os.path.join(port, "build", "blackpill-f411-cdc", "firmware.elf")
    assert make == f"make -s -C {port} BOARD_ID=blackpill-f411-cdc"
    assert objcopy.endswith(f"{elf} {elf[:-4]}.bin") and dfu.endswith(f"-D {elf[:-4]}.bin")
    out = _run("teensy41-sd", "--dry-run")
    assert out.exit_code == 1 and "no port of the firmware builds teensy41-sd yet: give --firmware" in out.output


def test_unknown_board_emulated_board_and_board_without_recipe(tmp_path, monkeypatch):
    out = _run("no-such-board", "--dry-run")
    assert out.exit_code == 1 and "known boards: blackpill-f411-cdc" in out.output
    out = _run("emu-uart-3m", "--dry-run", "--firmware", "x.elf")
    assert out.exit_code == 1 and "emulated board: there is nothing to flash" in out.output
    doc = _doc("teensy41-sd")
    del doc["flash"]
    bare = schema.validate(doc, "x/teensy41-sd/board.toml")
    assert bare.flash is None
    monkeypatch.setattr(schema, "load_board", lambda board_id: bare)
    out = _run("teensy41-sd", "--dry-run", "--firmware", "x.hex")
    assert out.exit_code == 1 and "teensy41-sd has no flashing recipe: add a [flash] table" in out.output
    assert len(out.output.strip().splitlines()) == 1


def test_wrong_format_and_port_that_does_not_apply():
    out = _run("blackpill-f411-cdc", "--dry-run", "--firmware", "a.uf2")
    assert out.exit_code == 1 and "dfu-util takes .bin (or an ELF to convert), not .uf2" in out.output
    out = _run("teensy41-sd", "--dry-run", "--firmware", "a.hex", "--port", "x")
    assert out.exit_code == 1 and "drop --port" in out.output


def test_missing_tool_is_one_line_naming_the_debian_package(tmp_path):
    fw = tmp_path / "a.bin"
    fw.write_bytes(b"\0" * 64)
    out = _run("blackpill-f411-cdc", "--firmware", str(fw), env={"PATH": str(tmp_path)})
    assert out.exit_code == 1
    assert out.output.strip() == ("Error: missing dfu-util (Debian package dfu-util): apt-get install dfu-util")
    out = _run("ft2232h-stm32-sd", "--firmware", str(fw), env={"PATH": str(tmp_path)})
    assert "openocd (Debian package openocd)" in out.output
    # building the default firmware needs the cross compiler as well as the flashing tool
    steps = flash.plan("blackpill-f411-cdc", schema.load_board("blackpill-f411-cdc").flash, "/fw/a.elf")
    found = {"make": "/usr/bin/make", "dfu-util": "/usr/bin/dfu-util"}
    assert flash.missing_tools([["make", "-C", "port"]] + steps, found.get) == [
        "arm-none-eabi-gcc (Debian package gcc-arm-none-eabi)",
        "arm-none-eabi-objcopy (Debian package binutils-arm-none-eabi)"]


def _stand_in(folder, name, rc=0):
    """A program ``name`` on PATH that records its arguments, one a line, in ``name``.args."""
    path = folder / name
    path.write_text(f"#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {folder}/{name}.args\nexit {rc}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_run_calls_the_tool_and_stops_at_a_failure(tmp_path):
    tools = tmp_path / "bin"
    tools.mkdir()
    _stand_in(tools, "dfu-util")
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x01" * 100)
    env = {"PATH": f"{tools}:{os.environ['PATH']}"}
    out = _run("blackpill-f411-cdc", "--firmware", str(fw), env=env)
    assert out.exit_code == 0, out.output
    assert (tools / "dfu-util.args").read_text().split() == [
        "-d", "0483:df11", "-a", "0", "-s", "0x08000000:leave", "-D", str(fw)]
    _stand_in(tools, "dfu-util", rc=74)
    out = _run("blackpill-f411-cdc", "--firmware", str(fw), env=env)
    assert out.exit_code == 1 and "dfu-util exited with 74" in out.output
    out = _run("blackpill-f411-cdc", "--firmware", str(tmp_path / "absent.bin"), env=env)
    assert out.exit_code == 1 and "no such firmware file" in out.output


def test_uf2_run_packs_and_copies_onto_the_drive(tmp_path):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\n")
    image = bytes(range(256)) * 2 + b"tail"
    fw = tmp_path / "fw.bin"
    fw.write_bytes(image)
    out = _run("rp2040-sd-cdc", "--firmware", str(fw), "--port", str(drive))
    assert out.exit_code == 0, out.output
    data = (drive / "fw.uf2").read_bytes()
    assert data == uf2.pack(image, 0x10000000, flash.UF2_FAMILIES["rp2040"])


def test_uf2_blocks_follow_the_format():
    image = b"\xAA" * 300
    data = uf2.pack(image, 0x10000000, 0xE48BFF56)
    assert len(data) == 2 * 512
    for n in range(2):
        block = data[n * 512:(n + 1) * 512]
        m0, m1, flags, addr, size, no, count, family = struct.unpack_from("<8I", block)
        assert (m0, m1, struct.unpack_from("<I", block, 508)[0]) == (0x0A324655, 0x9E5D5157, 0x0AB16F30)
        assert (flags, addr, size, no, count, family) == (0x2000, 0x10000000 + 256 * n, 256, n, 2, 0xE48BFF56)
    assert data[32:32 + 256] == b"\xAA" * 256 and data[512 + 32:512 + 32 + 44] == b"\xAA" * 44
    assert data[512 + 32 + 44:512 + 508] == b"\0" * (476 - 44)
    with pytest.raises(ValueError, match="empty"):
        uf2.pack(b"", 0, 1)
    with pytest.raises(ValueError, match="256-aligned"):
        uf2.pack(b"x", 0x10000001, 1)


@pytest.mark.parametrize("board_id,mutate,needle", [
    ("blackpill-f411-cdc", lambda f: f.update(speed=1), "unknown key 'flash.speed'; valid keys in [flash]: tool"),
    ("blackpill-f411-cdc", lambda f: f.update(tool="jtag"), "flash.tool = 'jtag' is not allowed; valid values: dfu-util"),
    ("blackpill-f411-cdc", lambda f: f.pop("address"), "flash.tool = 'dfu-util' needs flash.address"),
    ("blackpill-f411-cdc", lambda f: f.update(volume="X"), "flash.volume does not apply to flash.tool = 'dfu-util'"),
    ("blackpill-f411-cdc", lambda f: f.update(pid=0x10000), "flash.pid = 0x10000 is not a 16-bit USB id"),
    ("blackpill-f411-cdc", lambda f: f.update(address="0x0800"), "flash.address = '0x0800' must be a int"),
    ("blackpill-f411-cdc", lambda f: f.update(address=0x08000001), "aligned to 256 bytes"),
    ("blackpill-f411-cdc", lambda f: f.pop("tool"), "missing key flash.tool"),
    ("rp2040-sd-cdc", lambda f: f.update(family="esp32"), "flash.family = 'esp32' is not allowed"),
    ("rp2040-sd-cdc", lambda f: f.update(volume="rpi rp2"), "flash.volume = 'rpi rp2'"),
    ("teensy41-sd", lambda f: f.update(mcu="TEENSY99"), "flash.mcu = 'TEENSY99' is not allowed"),
    ("ft2232h-stm32-sd", lambda f: f.update(interface="usb"), "flash.interface = 'usb' is not allowed"),
    ("ft2232h-stm32-sd", lambda f: f.update(target="STM32F4X"), "flash.target = 'STM32F4X'"),
    ("emu-uart-3m", lambda f: f.update(tool="pyocd", target="stm32f411ce"), "an emulated board has nothing to flash"),
])
def test_flash_table_rejections_name_the_key(board_id, mutate, needle):
    doc = copy.deepcopy(_doc(board_id))
    mutate(doc["flash"])
    with pytest.raises(BoardDefinitionError) as info:
        schema.validate(doc, f"boards/{board_id}/board.toml")
    assert needle in str(info.value)
