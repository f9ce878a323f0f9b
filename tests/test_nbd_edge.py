"""The NBD edge translates: the controller sees only its own opcodes, flags, states and errnos.

NBD's numbers live in ``firmware/frontend/nbd/proto.py``; below the front end nothing imports
or names one. The raw client (``nbd_raw``) speaks the wire with its own copy of the numbers, and
the controller's ``submit`` is recorded to see exactly what the edge handed it.
"""
from __future__ import annotations

import ast
import errno
import pathlib
import re
import struct

import pytest

from nbd_raw import CMD, ERR, FLAG, RawClient
from splitpoint import config
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.service import ServiceThread
from splitpoint.firmware.requests import (FLAG_FAST_ZERO, FLAG_FUA, FLAG_NO_HOLE, FLAG_SUB_BLOCK, STATE_HOLE,
                                          STATE_ZERO, Op)

FIRMWARE = pathlib.Path(__file__).resolve().parent.parent / "firmware"
SIZE = 4 << 20
CONFIG = f"""
[[lun]]
name = "lun0"
url = "ram://lun0?size={SIZE}"
[lun.pool]
mirror = "sync"
members = ["ram://b0?size={SIZE}", "ram://b1?size={SIZE}"]
"""


def _below_the_front_end():
    for path in sorted(FIRMWARE.rglob("*.py")):
        if "frontend" not in path.relative_to(FIRMWARE).parts:
            yield path


def _nbd_references(source: str, where: str = "") -> list[str]:
    """Every import of the front end (or of a module called nbd) and every NBD_ name in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            modules = []
        for module in modules:
            if "frontend" in module or re.search(r"(^|\.)nbd", module):
                found.append(f"{where}:{node.lineno}: imports {module}")
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name and name.startswith("NBD_"):
            found.append(f"{where}:{node.lineno}: names {name}")
    return found


def test_the_check_finds_nbd_imports_and_names():
    assert len(_nbd_references("from splitpoint.firmware.frontend.nbd import proto\nx = proto.NBD_CMD_FLAG_FUA\n"
                               "import splitpoint.firmware.frontend.nbd.proto\ny = NBD_EIO\n")) == 4
    assert _nbd_references("from splitpoint.firmware.requests import FLAG_FUA\nx = FLAG_FUA\n") == []


def test_nothing_below_the_front_end_imports_or_names_an_nbd_constant():
    paths = list(_below_the_front_end())
    assert any(p.name == "controller.py" for p in paths) and len(paths) > 10
    found = [ref for path in paths for ref in _nbd_references(path.read_text(), path.name)]
    assert not found, "\n".join(found)


@pytest.fixture
def recorded():
    """A served controller whose submissions are recorded as (op, flags, offset, length):
    (address, the record, the controller)."""
    ctl = Controller.from_config(config.loads(CONFIG))
    seen = []
    submit = ctl.submit

    def recording(lun, op, offset=0, length=0, data=None, flags=0, label=None, callback=None, **kw):
        seen.append((op, flags, offset, length))
        return submit(lun, op, offset, length, data, flags, label, callback, **kw)

    ctl.submit = recording
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), control=False)
    service = thread.start()
    host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
    try:
        yield (host, int(port)), seen, ctl
    finally:
        thread.stop()


def test_each_nbd_request_reaches_the_controller_in_its_own_words(recorded):
    address, seen, _ctl = recorded
    c = RawClient(address).connect("lun0")
    cases = [  # (NBD command, NBD flags, offset, length) -> (opcode, controller flags)
        (("WRITE", FLAG["FUA"], 0, 4096), (Op.WRITE, FLAG_FUA)),              # the fast path
        (("WRITE", 0, 4096, 4096), (Op.WRITE, 0)),
        (("READ", 0, 0, 4096), (Op.READ, 0)),
        (("WRITE_ZEROES", FLAG["NO_HOLE"] | FLAG["FAST_ZERO"] | FLAG["FUA"], 8192, 4096),
         (Op.WRITE_ZEROES, FLAG_NO_HOLE | FLAG_FAST_ZERO | FLAG_FUA)),
        (("WRITE_ZEROES", FLAG["NO_HOLE"], 8192, 4096), (Op.WRITE_ZEROES, FLAG_NO_HOLE)),
        (("TRIM", FLAG["FUA"], 12288, 4096), (Op.TRIM, FLAG_FUA)),
        (("FLUSH", 0, 0, 0), (Op.FLUSH, 0)),
        (("CACHE", 0, 0, 4096), (Op.CACHE, 0)),
    ]
    for (cmd, flags, offset, length), (op, ctl_flags) in cases:
        seen.clear()
        payload = bytes([7]) * length if cmd == "WRITE" else b""
        assert c.do(cmd, offset, length, flags, payload).error == 0, cmd
        assert seen == [(op, ctl_flags, offset, length)], (cmd, flags)
        assert all(type(o) is int or isinstance(o, Op) for o, *_ in seen)


def test_an_unaligned_write_is_a_sub_block_write_with_the_controller_flags(recorded):
    address, seen, _ctl = recorded
    c = RawClient(address)
    c.start()
    assert c.go("lun0")[-1][0] == 1               # GO without NBD_INFO_BLOCK_SIZE: any alignment
    assert c.do("WRITE", 100, 10, FLAG["FUA"], b"y" * 10).error == 0
    assert seen == [(Op.WRITE, FLAG_FUA | FLAG_SUB_BLOCK, 100, 10)]


def test_the_special_path_translates_before_its_trigger(recorded):
    address, seen, _ctl = recorded
    c = RawClient(address).connect("lun0.trigger")
    assert c.do("WRITE", 0, 512, FLAG["FUA"], b"x" * 512).error == 0
    assert [(op, flags) for op, flags, *_ in seen] == [(Op.WRITE, FLAG_FUA), (Op.TRIGGER, 0)]


def test_nbd_flags_the_controller_has_no_word_for_stop_at_the_edge(recorded):
    address, seen, _ctl = recorded
    c = RawClient(address).connect("lun0", structured=True)
    assert c.do("READ", 0, 4096, FLAG["DF"]).error == 0           # DF shapes the reply only
    assert seen == [(Op.READ, 0, 0, 4096)]
    seen.clear()
    assert c.do("WRITE", 0, 512, FLAG["REQ_ONE"], bytes(512)).error == ERR["EINVAL"]   # not a WRITE flag
    assert c.do(CMD["WRITE"], 0, 512, 1 << 9, bytes(512)).error == ERR["EINVAL"]      # no flag at all
    assert seen == []


def test_block_status_reports_the_controllers_states_as_nbd_states(recorded, monkeypatch):
    address, _seen, ctl = recorded
    from splitpoint.firmware.frontend.nbd import proto

    def allocation(lun, offset, length):
        return [(offset, 4096, STATE_HOLE | STATE_ZERO), (offset + 4096, 4096, STATE_ZERO),
                (offset + 8192, length - 8192, 0)]

    monkeypatch.setattr(ctl, "allocation", allocation)
    c = RawClient(address).connect("lun0", meta=True)
    reply = c.do("BLOCK_STATUS", 0, 16384)
    assert reply.error == 0
    (ctype, payload), = reply.chunks
    pairs = struct.unpack(f">I{(len(payload) - 4) // 4}I", payload)[1:]
    assert list(zip(pairs[::2], pairs[1::2])) == [(4096, proto.NBD_STATE_HOLE | proto.NBD_STATE_ZERO),
                                                  (4096, proto.NBD_STATE_ZERO), (8192, 0)]


def test_controller_states_and_errnos_become_nbd_numbers_in_one_table_each():
    from splitpoint.firmware.frontend.nbd import proto
    from splitpoint.firmware.frontend.nbd.replies import NBD_STATES, nbd_error

    assert NBD_STATES == {0: 0, STATE_HOLE: proto.NBD_STATE_HOLE, STATE_ZERO: proto.NBD_STATE_ZERO,
                          STATE_HOLE | STATE_ZERO: proto.NBD_STATE_HOLE | proto.NBD_STATE_ZERO}
    expected = {E.ReadOnlyError: 1, E.FrozenMemberError: 1, E.BadRequestError: 22, E.MisalignedError: 22,
                E.DeviceIOError: 5, E.ShuttingDownError: 108, E.QueueFullError: 5, E.NoSuchBackupError: 5,
                E.DeviceOpenError: 5}
    assert {cls: nbd_error(cls("x").errno) for cls in expected} == expected
    assert nbd_error(E.OutOfRangeError("past the end", errno.ENOSPC).errno) == 28
    assert nbd_error(None) == 5
