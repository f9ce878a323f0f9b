"""Board definitions: the schema of ``boards/<BOARD_ID>/board.toml`` and its loader.

Owns the allowed keys and values and the checks on them; a definition that
breaks a rule fails with BoardDefinitionError naming the file, the key and
the valid choices. It never opens a port: detection is ``detect``, which only
reads ``serial.tools.list_ports``.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field

from .flash import FlashRecipe, validate_recipe

BOARDS_DIR = os.path.dirname(os.path.abspath(__file__))

BRIDGES = ("rp2040", "stm32f411", "stm32f405", "ft2232h", "cp2102n", "imxrt1062", "emulated")
KINDS = ("real", "emulated")
STORAGE = ("sd", "spi-flash", "emmc", "ram", "file")
LINK_KINDS = ("uart", "usb-cdc-fs", "usb-cdc-hs")
FEATURES = ("flush", "trim", "fua", "trigger", "read-only", "control")
BLOCK_SIZES = (512, 1024, 2048, 4096)

#: table -> {key: (type, required)}; the top level is ""
SCHEMA = {
    "": {"id": (str, True), "vendor": (str, True), "product": (str, True), "url": (str, True),
         "bridge": (str, True), "kind": (str, True), "storage": (str, True), "firmware": (str, True),
         "features": (list, True)},
    "usb": {"vid": (int, True), "pid": (int, True)},
    "link": {"kind": (str, True), "rate": (int, True), "baud": (int, False)},
    "geometry": {"block_size": (int, True), "capacity": (str, True), "max_transfer": (int, True),
                 "window": (int, True)},
    "channels": {"data_interface": (int, True), "control_interface": (int, False)},
    "flash": {},  # its keys depend on flash.tool: checked by flash.validate_recipe
}
REQUIRED_TABLES = ("link", "geometry", "channels")
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,31}$")
_VERSION = re.compile(r"^\d{1,3}\.\d{1,3}\.\d{1,3}$")
_SIZE = re.compile(r"^(\d+)([KMGT]?)$")


class BoardDefinitionError(ValueError):
    """A board.toml breaks the schema, or a board id names no definition."""


@dataclass(frozen=True)
class BoardDef:
    """One validated board definition."""

    id: str
    vendor: str
    product: str
    url: str
    bridge: str
    kind: str
    storage: str
    firmware: str
    features: tuple
    link_kind: str
    link_rate: int  # payload bytes per second the link carries
    block_size: int
    capacity: int | None  # None: the medium's size is reported by INFO
    max_transfer: int
    window: int
    data_interface: int
    control_interface: int | None
    baud: int | None = None
    vid: int | None = None
    pid: int | None = None
    flash: FlashRecipe | None = None  # how `splitpoint flash` writes the firmware; None: no recipe
    path: str = field(default="", compare=False)

    @property
    def emulated(self) -> bool:
        return self.kind == "emulated"

    @property
    def usb_id(self) -> str:
        """'VID:PID' in hex as pyserial's hwgrep:// takes it, or '' for an emulated board."""
        return f"{self.vid:04X}:{self.pid:04X}" if self.vid is not None else ""


def _fail(source: str, msg: str):
    raise BoardDefinitionError(f"{source}: {msg}")


def _choice(source: str, key: str, value, allowed) -> None:
    if value not in allowed:
        _fail(source, f"{key} = {value!r} is not allowed; valid values: {', '.join(map(str, allowed))}")


def _size(source: str, text: str) -> int | None:
    if text == "reported":
        return None
    m = _SIZE.match(text)
    if not m:
        _fail(source, f"geometry.capacity = {text!r}: use a size like \"64M\" or \"reported\"")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[m.group(2)]


def validate(doc: dict, source: str = "<board>") -> BoardDef:
    """Check a parsed board.toml against SCHEMA and the allowed values; return the definition."""
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in SCHEMA or key == "":
                tables = ", ".join(k for k in SCHEMA if k)
                _fail(source, f"unknown table [{key}]; valid tables: {tables}")
        elif key not in SCHEMA[""]:
            _fail(source, f"unknown key {key!r}; valid keys: {', '.join(SCHEMA[''])} and tables "
                          f"{', '.join('[' + k + ']' for k in SCHEMA if k)}")
    for table, keys in SCHEMA.items():
        section = doc if table == "" else doc.get(table)
        prefix = f"{table}." if table else ""
        if section is None:
            if table in REQUIRED_TABLES:
                _fail(source, f"missing table [{table}]")
            continue
        if table == "flash":
            continue
        for key, value in section.items():
            if table and key not in keys:
                _fail(source, f"unknown key '{prefix}{key}'; valid keys in [{table}]: {', '.join(keys)}")
        for key, (typ, required) in keys.items():
            if key not in section:
                if required:
                    _fail(source, f"missing key {prefix}{key}")
                continue
            value = section[key]
            if not isinstance(value, typ) or isinstance(value, bool):
                _fail(source, f"{prefix}{key} = {value!r} must be a {typ.__name__}")
    link, geo, ch, usb = doc["link"], doc["geometry"], doc["channels"], doc.get("usb")

    board_id = doc["id"]
    if not _ID.match(board_id):
        _fail(source, f"id = {board_id!r}: use 2-32 lowercase letters, digits and dashes")
    folder = os.path.basename(os.path.dirname(source)) if source.endswith("board.toml") else board_id
    if folder != board_id:
        _fail(source, f"id = {board_id!r} differs from its folder name {folder!r}")
    _choice(source, "bridge", doc["bridge"], BRIDGES)
    _choice(source, "kind", doc["kind"], KINDS)
    _choice(source, "storage", doc["storage"], STORAGE)
    _choice(source, "link.kind", link["kind"], LINK_KINDS)
    for feat in doc["features"]:
        _choice(source, "features entry", feat, FEATURES)
    if len(set(doc["features"])) != len(doc["features"]):
        _fail(source, "features lists an entry twice")
    if not _VERSION.match(doc["firmware"]):
        _fail(source, f"firmware = {doc['firmware']!r}: use major.minor.patch")
    if not doc["url"].startswith(("https://", "http://")) and not (emulated_url := doc["url"]).startswith("docs/"):
        _fail(source, f"url = {emulated_url!r} must be an http(s) address or a docs/ page of this project")

    emulated = doc["kind"] == "emulated"
    if emulated != (doc["bridge"] == "emulated"):
        _fail(source, "kind = \"emulated\" goes with bridge = \"emulated\", and only with it")
    if emulated and usb is not None:
        _fail(source, "an emulated board has no [usb] table")
    if not emulated and usb is None:
        _fail(source, "a real board needs [usb] vid and pid (the IDs its firmware presents)")
    if usb is not None:
        for key in ("vid", "pid"):
            if not 0 < usb[key] <= 0xFFFF:
                _fail(source, f"usb.{key} = {usb[key]:#x} is not a 16-bit USB id")
    if link["kind"] == "uart":
        if "baud" not in link:
            _fail(source, "link.kind = \"uart\" needs link.baud")
        if link["rate"] > link["baud"] // 10:
            _fail(source, f"link.rate {link['rate']} is above what {link['baud']} baud carries at 8N1 "
                          f"({link['baud'] // 10} bytes/s)")
    elif "baud" in link:
        _fail(source, f"link.baud only applies to link.kind = \"uart\", not {link['kind']!r}")
    if link["rate"] <= 0:
        _fail(source, f"link.rate = {link['rate']} must be positive (bytes per second)")

    _choice(source, "geometry.block_size", geo["block_size"], BLOCK_SIZES)
    capacity = _size(source, geo["capacity"])
    if emulated and capacity is None:
        _fail(source, "an emulated board needs a geometry.capacity size (it has no medium to ask)")
    if capacity is not None and (capacity <= 0 or capacity % geo["block_size"]):
        _fail(source, f"geometry.capacity {geo['capacity']} is not a positive multiple of the block size")
    mt = geo["max_transfer"]
    if mt < geo["block_size"] or mt % geo["block_size"] or mt > 1 << 20:
        _fail(source, f"geometry.max_transfer = {mt} must be a multiple of the block size, at most 1 MiB")
    if not 1 <= geo["window"] <= 32:
        _fail(source, f"geometry.window = {geo['window']} must be 1..32 (the NAK bitmap's reach)")
    for key in ("data_interface", "control_interface"):
        if key in ch and not 0 <= ch[key] <= 15:
            _fail(source, f"channels.{key} = {ch[key]} must be a USB interface number 0..15")
    if ("control" in doc["features"]) != ("control_interface" in ch):
        _fail(source, "feature \"control\" and channels.control_interface go together")
    if ch.get("control_interface") == ch["data_interface"]:
        _fail(source, "channels.control_interface must differ from channels.data_interface")
    flash = None
    if "flash" in doc:
        flash = validate_recipe(doc["flash"], lambda msg: _fail(source, msg))
        if emulated and flash.tool != "none":
            _fail(source, f"flash.tool = {flash.tool!r}: an emulated board has nothing to flash; use \"none\"")

    return BoardDef(
        id=board_id, vendor=doc["vendor"], product=doc["product"], url=doc["url"], bridge=doc["bridge"],
        kind=doc["kind"], storage=doc["storage"], firmware=doc["firmware"], features=tuple(doc["features"]),
        link_kind=link["kind"], link_rate=link["rate"], block_size=geo["block_size"], capacity=capacity,
        max_transfer=mt, window=geo["window"], data_interface=ch["data_interface"],
        control_interface=ch.get("control_interface"), baud=link.get("baud"),
        vid=usb["vid"] if usb else None, pid=usb["pid"] if usb else None, flash=flash, path=source,
    )


def load_file(path: str) -> BoardDef:
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise BoardDefinitionError(f"{path}: not valid TOML: {exc}") from None
    return validate(doc, path)


def board_ids(root: str = BOARDS_DIR) -> list[str]:
    """Every folder under ``root`` holding a board.toml, sorted."""
    return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "board.toml")))


def load_board(board_id: str, root: str = BOARDS_DIR) -> BoardDef:
    """The definition of ``board_id``; BoardDefinitionError names the known ids when there is none."""
    path = os.path.join(root, board_id, "board.toml")
    if not _ID.match(board_id) or not os.path.isfile(path):
        raise BoardDefinitionError(f"no board definition {board_id!r}; known boards: {', '.join(board_ids(root))}")
    return load_file(path)


def all_boards(root: str = BOARDS_DIR) -> list[BoardDef]:
    return [load_board(b, root) for b in board_ids(root)]


@dataclass(frozen=True)
class AttachedBoard:
    """A serial port whose USB VID/PID matches a definition."""

    board: BoardDef
    device: str  # the port's device path
    role: str  # "data", "control" or "unknown" (interface number not reported)
    serial_number: str | None
    description: str


def detect(ports=None, boards=None) -> list[AttachedBoard]:
    """Match serial ports (``serial.tools.list_ports.comports()`` by default) to real board definitions."""
    if ports is None:
        from serial.tools import list_ports

        ports = list_ports.comports()
    boards = [b for b in (all_boards() if boards is None else boards) if not b.emulated]
    found = []
    for port in ports:
        if port.vid is None:
            continue
        iface = _interface(port)
        for board in boards:
            if (board.vid, board.pid) != (port.vid, port.pid):
                continue
            role = "unknown"
            if iface is not None:
                role = ("data" if iface == board.data_interface else
                        "control" if iface == board.control_interface else "other")
            found.append(AttachedBoard(board, port.device, role, port.serial_number, port.description or ""))
    return found


def _interface(port) -> int | None:
    """The USB interface number of a port, from pyserial's ``location`` ("1-1.2:1.2" -> 2)."""
    loc = getattr(port, "location", None) or ""
    m = re.search(r":\d+\.(\d+)$", loc)
    return int(m.group(1)) if m else None
