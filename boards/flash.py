"""Flashing recipes: the ``[flash]`` table of a board.toml and the commands it stands for.

Owns the allowed tools and their keys (``validate_recipe``, called by the
schema), and ``plan``, which turns a recipe, a firmware file and an optional
port into the exact argument lists to run (a conversion with objcopy or the
UF2 packer first when the tool takes another format than the file has).
``missing_tools`` names the Debian package of each program a plan needs.
It never runs anything itself and never opens a port: ``splitpoint flash``
runs the plan.

A recipe per tool (every key is checked; an unknown key is an error):

    tool = "dfu-util"   vid, pid (the DFU bootloader's IDs), address, [alt]
    tool = "openocd"    interface (a probe of INTERFACES), target (an OpenOCD target config name)
    tool = "pyocd"      target (a pyOCD target name)
    tool = "uf2"        volume (the bootloader drive's label), family (of UF2_FAMILIES), address
    tool = "teensy"     mcu (of TEENSY_MCUS): teensy_loader_cli
    tool = "none"       nothing to flash (an emulated board)
"""
from __future__ import annotations

import getpass
import glob
import os
import re
import sys
from dataclasses import dataclass

TOOLS = ("dfu-util", "openocd", "pyocd", "uf2", "teensy", "none")
INTERFACES = ("stlink", "cmsis-dap", "jlink", "picoprobe")
#: UF2 family name -> the familyID the bootloader checks (from the UF2 specification)
UF2_FAMILIES = {"rp2040": 0xE48BFF56, "stm32f4": 0x57755A57, "samd21": 0x68ED2B88, "samd51": 0x55114460}
TEENSY_MCUS = ("TEENSY40", "TEENSY41", "TEENSY_MICROMOD")
#: tool -> (required keys, optional keys), besides "tool"
TOOL_KEYS = {
    "dfu-util": (("vid", "pid", "address"), ("alt",)),
    "openocd": (("interface", "target"), ()),
    "pyocd": (("target",), ()),
    "uf2": (("volume", "family", "address"), ()),
    "teensy": (("mcu",), ()),
    "none": ((), ()),
}
#: every key a [flash] table may hold, with its type
KEY_TYPES = {"tool": str, "vid": int, "pid": int, "address": int, "alt": int, "interface": str,
             "target": str, "volume": str, "family": str, "mcu": str}
#: program -> the Debian package that installs it
DEBIAN_PACKAGES = {"dfu-util": "dfu-util", "openocd": "openocd", "pyocd": "python3-pyocd",
                   "teensy_loader_cli": "teensy-loader-cli", "arm-none-eabi-objcopy": "binutils-arm-none-eabi", "make": "make",
                   "arm-none-eabi-gcc": "gcc-arm-none-eabi"}
#: program of a step -> the programs it runs in turn (building a port compiles with the cross compiler)
RUNS_TOO = {"make": ("arm-none-eabi-gcc",)}
#: tool -> the firmware formats it takes (by file suffix), the first one being what an ELF is converted to
FORMATS = {"dfu-util": (".bin",), "openocd": (".elf", ".hex", ".bin"), "pyocd": (".elf", ".hex", ".bin"),
           "uf2": (".uf2",), "teensy": (".hex",)}
_NAME = re.compile(r"^[a-z0-9_]{2,32}$")
_VOLUME = re.compile(r"^[A-Z0-9_-]{1,11}$")  # a FAT volume label


class FlashError(RuntimeError):
    """A board cannot be flashed as asked; the message says what to give, build or install."""


@dataclass(frozen=True)
class FlashRecipe:
    """One validated ``[flash]`` table."""

    tool: str
    vid: int | None = None
    pid: int | None = None
    address: int | None = None
    alt: int = 0
    interface: str | None = None
    target: str | None = None
    volume: str | None = None
    family: str | None = None
    mcu: str | None = None


def validate_recipe(table: dict, fail) -> FlashRecipe:
    """Check a ``[flash]`` table; ``fail(msg)`` raises the schema's error."""
    for key, value in table.items():
        if key not in KEY_TYPES:
            fail(f"unknown key 'flash.{key}'; valid keys in [flash]: {', '.join(KEY_TYPES)}")
        if not isinstance(value, KEY_TYPES[key]) or isinstance(value, bool):
            fail(f"flash.{key} = {value!r} must be a {KEY_TYPES[key].__name__}")
    tool = table.get("tool")
    if tool is None:
        fail("missing key flash.tool")
    if tool not in TOOLS:
        fail(f"flash.tool = {tool!r} is not allowed; valid values: {', '.join(TOOLS)}")
    required, optional = TOOL_KEYS[tool]
    for key in required:
        if key not in table:
            fail(f"flash.tool = {tool!r} needs flash.{key}")
    for key in table:
        if key != "tool" and key not in required + optional:
            fail(f"flash.{key} does not apply to flash.tool = {tool!r}; its keys: "
                 f"{', '.join(required + optional) or 'none'}")
    for key in ("vid", "pid"):
        if key in table and not 0 < table[key] <= 0xFFFF:
            fail(f"flash.{key} = {table[key]:#x} is not a 16-bit USB id")
    if "address" in table and (not 0 <= table["address"] <= 0xFFFFFFFF or table["address"] % 256):
        fail(f"flash.address = {table['address']:#x} must be a 32-bit address aligned to 256 bytes")
    if "alt" in table and not 0 <= table["alt"] <= 255:
        fail(f"flash.alt = {table['alt']} must be a DFU alternate setting 0..255")
    if "interface" in table and table["interface"] not in INTERFACES:
        fail(f"flash.interface = {table['interface']!r} is not allowed; valid values: {', '.join(INTERFACES)}")
    if "target" in table and not _NAME.match(table["target"]):
        fail(f"flash.target = {table['target']!r}: use 2-32 lowercase letters, digits and underscores")
    if "volume" in table and not _VOLUME.match(table["volume"]):
        fail(f"flash.volume = {table['volume']!r}: use a FAT label of 1-11 capitals, digits, '_' or '-'")
    if "family" in table and table["family"] not in UF2_FAMILIES:
        fail(f"flash.family = {table['family']!r} is not allowed; valid values: {', '.join(UF2_FAMILIES)}")
    if "mcu" in table and table["mcu"] not in TEENSY_MCUS:
        fail(f"flash.mcu = {table['mcu']!r} is not allowed; valid values: {', '.join(TEENSY_MCUS)}")
    return FlashRecipe(**table)


def find_volume(label: str) -> str | None:
    """The mount point of a UF2 bootloader drive labelled ``label`` (it holds INFO_UF2.TXT), if mounted."""
    for pattern in (f"/media/*/{label}", f"/run/media/*/{label}", f"/media/{label}", f"/mnt/{label}"):
        for path in sorted(glob.glob(pattern)):
            if os.path.isfile(os.path.join(path, "INFO_UF2.TXT")):
                return path
    return None


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def plan(board_id: str, recipe: FlashRecipe | None, firmware: str, port: str | None = None,
         emulated: bool = False) -> list[list[str]]:
    """The commands that flash ``firmware`` with ``recipe``, in order; FlashError when there are none."""
    if recipe is None or recipe.tool == "none":
        if emulated:
            raise FlashError(f"{board_id} is an emulated board: there is nothing to flash; run it with "
                             f"`splitpoint emulate {board_id} --link PATH` (or --qemu/--cffi)")
        raise FlashError(f"{board_id} has no flashing recipe: add a [flash] table to its board.toml "
                         f"(tool = {', '.join(repr(t) for t in TOOLS[:-1])})")
    formats = FORMATS[recipe.tool]
    steps = []
    suffix = _suffix(firmware)
    if suffix not in formats + (".elf",) and not (recipe.tool == "uf2" and suffix == ".bin"):
        raise FlashError(f"{firmware}: {recipe.tool} takes {', '.join(formats)} (or an ELF to convert), "
                         f"not {suffix or 'a file without a suffix'}")
    if suffix == ".elf" and ".elf" not in formats:
        want = ".bin" if formats[0] == ".uf2" else formats[0]
        out = os.path.splitext(firmware)[0] + want
        steps.append(["arm-none-eabi-objcopy", "-O", "ihex" if want == ".hex" else "binary", firmware, out])
        firmware, suffix = out, want
    if recipe.tool == "uf2" and suffix == ".bin":
        out = os.path.splitext(firmware)[0] + ".uf2"
        steps.append([sys.executable, "-m", "splitpoint.boards.uf2", firmware, out,
                      "--address", f"{recipe.address:#010x}", "--family", recipe.family])
        firmware = out
    steps.append(_tool_command(recipe, firmware, port))
    return steps


def _tool_command(r: FlashRecipe, firmware: str, port: str | None) -> list[str]:
    if r.tool == "dfu-util":
        cmd = ["dfu-util", "-d", f"{r.vid:04x}:{r.pid:04x}", "-a", str(r.alt)]
        if port:
            cmd += ["-p", port]  # the USB bus-port path, as dfu-util -l lists it
        return cmd + ["-s", f"{r.address:#010x}:leave", "-D", firmware]
    if r.tool == "openocd":
        cmd = ["openocd", "-f", f"interface/{r.interface}.cfg", "-f", f"target/{r.target}.cfg"]
        if port:
            cmd += ["-c", f"adapter serial {port}"]
        return cmd + ["-c", f"program {firmware} verify reset exit"]
    if r.tool == "pyocd":
        return ["pyocd", "flash", "-t", r.target] + (["-u", port] if port else []) + [firmware]
    if r.tool == "uf2":
        drive = port or find_volume(r.volume) or f"/media/{getpass.getuser()}/{r.volume}"
        return ["cp", firmware, drive.rstrip("/") + "/"]
    if port:
        raise FlashError("teensy_loader_cli picks the board itself: drop --port")
    return ["teensy_loader_cli", f"--mcu={r.mcu}", "-w", "-v", firmware]


def missing_tools(steps: list[list[str]], which) -> list[str]:
    """'program (Debian package pkg)' for each program of ``steps`` that ``which`` cannot find."""
    missing = []
    for argv in steps:
        for prog in (argv[0],) + RUNS_TOO.get(argv[0], ()):
            if prog not in DEBIAN_PACKAGES or which(prog) is not None:
                continue
            entry = f"{prog} (Debian package {DEBIAN_PACKAGES[prog]})"
            if entry not in missing:
                missing.append(entry)
    return missing
