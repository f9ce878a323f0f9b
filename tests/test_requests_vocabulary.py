"""The controller's own vocabulary: opcodes and request flags that are nobody else's numbers.

A front end translates its protocol's words into these (the NBD edge in ``nbd.transmission``);
a protocol word passed through untranslated must be refused, never read as another request.
"""
from __future__ import annotations

import pytest

from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.errors import BadRequestError
from splitpoint.firmware.requests import FLAG_FAST_ZERO, FLAG_FUA, FLAG_NO_HOLE, FLAG_SUB_BLOCK, FLAGS_KNOWN, Op

CONFIG = """
[[lun]]
name = "lun0"
url = "ram://lun0?size=1M"
"""

#: NBD's command flags (doc/proto.md), spelled out here as a client would send them
NBD_COMMAND_FLAGS = {"FUA": 1, "NO_HOLE": 2, "DF": 4, "REQ_ONE": 8, "FAST_ZERO": 16}


@pytest.fixture
def ctl():
    c = Controller.from_config(config.loads(CONFIG))
    yield c
    c.close()


def test_the_flags_are_distinct_bits_and_share_none_with_a_protocol_flag_word():
    ours = [FLAG_FUA, FLAG_NO_HOLE, FLAG_FAST_ZERO, FLAG_SUB_BLOCK]
    assert all(f and f & (f - 1) == 0 for f in ours) and len(set(ours)) == 4
    assert FLAGS_KNOWN == FLAG_FUA | FLAG_NO_HOLE | FLAG_FAST_ZERO
    assert all(0 < f < 0x10000 for f in ours)
    assert not any(f & 0xFF for f in ours)      # the low byte is never a controller flag


@pytest.mark.parametrize("name", NBD_COMMAND_FLAGS)
def test_a_raw_nbd_flag_on_a_write_is_refused_not_taken_for_a_controller_flag(ctl, name):
    done = []
    ctl.submit("lun0", Op.WRITE, 0, 4096, bytes(4096), NBD_COMMAND_FLAGS[name], callback=done.append)
    ctl.poll()
    (completion,) = done
    assert isinstance(completion.error, BadRequestError), (name, completion)
    assert ctl.read("lun0", 0, 4096) == bytes(4096)


def test_the_opcodes_are_one_to_eight_and_zero_is_none(ctl):
    assert sorted(int(op) for op in Op) == list(range(1, 9))
    done = []
    ctl.submit("lun0", 0, 0, 4096, callback=done.append)
    ctl.poll()
    assert isinstance(done[0].error, BadRequestError) and "opcode 0" in str(done[0].error)


def test_a_fua_write_through_the_blocking_api_reaches_the_device_as_fua(ctl):
    lun = ctl.luns["lun0"]
    seen = []
    write = lun.device.write

    def recording(offset, data, fua=False):
        seen.append(bool(fua))
        return write(offset, data, fua)

    lun.device.write = recording
    ctl.write("lun0", 0, b"\x01" * 4096, fua=True)
    ctl.write("lun0", 4096, b"\x02" * 4096)
    # the plain write may skip write() (a RAM device's memory path), never arrive as FUA
    assert seen in ([True, False], [True])
    assert ctl.read("lun0", 0, 8192) == b"\x01" * 4096 + b"\x02" * 4096
