"""[[lun]] layout = "stripe": the config keys, their errors, and a controller over a striped LUN."""
import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller

STRIPED = """
[[lun]]
name = "s0"
layout = "stripe"
stripe = "4K"
parts = ["ram://s0p0?size=1M", "ram://s0p1?size=1M"]

[lun.pool]
members = ["ram://s0b0?size=2M", "ram://s0b1?size=2M", "ram://s0b2?size=2M"]
"""


def test_striped_lun_config_loads():
    cfg = cfgmod.loads(STRIPED)
    lun = cfg.luns[0]
    assert lun.stripe == 4096 and lun.parts == ("ram://s0p0?size=1M", "ram://s0p1?size=1M")


@pytest.mark.parametrize("body, msg", [
    ('layout = "mirror"\nurl = "ram://?size=1M"', "layout must be one of flat, stripe"),
    ('url = "ram://?size=1M"\nstripe = "4K"', "stripe needs layout"),
    ('layout = "stripe"\nparts = ["ram://?size=1M", "ram://?size=1M"]', "needs stripe = SIZE"),
    ('layout = "stripe"\nstripe = 1000\nparts = ["ram://?size=1M", "ram://?size=1M"]', "multiple of 512"),
    ('layout = "stripe"\nstripe = "4K"\nparts = ["ram://?size=1M"]', "two or more device URLs"),
    ('layout = "stripe"\nstripe = "4K"\nparts = ["ram://?size=1M", "nope"]', "parts[1] must be a device URL"),
    ('layout = "stripe"\nstripe = "4K"\nurl = "ram://?size=1M"\nparts = ["ram://?size=1M", "ram://?size=1M"]',
     "has parts, not url"),
])
def test_striped_lun_config_errors(body, msg):
    with pytest.raises(cfgmod.ConfigError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        cfgmod.loads(f'[[lun]]\nname = "s0"\n{body}\n')


def test_two_parts_on_one_file_are_refused(tmp_path):
    img = tmp_path / "p.img"
    with pytest.raises(cfgmod.ConfigError, match="name the same device"):
        cfgmod.loads(f'[[lun]]\nname = "s0"\nlayout = "stripe"\nstripe = "4K"\n'
                     f'parts = ["file://{img}?size=1M", "file://{img}?size=1M"]\n')


def test_a_part_too_small_for_one_unit_is_a_geometry_error():
    cfg = cfgmod.loads('[[lun]]\nname = "s0"\nlayout = "stripe"\nstripe = "64K"\n'
                       'parts = ["ram://?size=32K", "ram://?size=1M"]\n')
    with pytest.raises(E.GeometryError, match="holds no whole stripe unit"):
        Controller.from_config(cfg)


def test_striped_lun_backups_are_its_writes_before_each_cut():
    with Controller.from_config(cfgmod.loads(STRIPED)) as ctl:
        assert ctl.luns["s0"].size == 2 << 20
        flat = bytearray(2 << 20)
        cuts = {}
        for i in range(6):
            off = (i * 12288 + 1024) % ((2 << 20) - 65536)
            data = bytes([i + 1]) * 20480   # crosses several stripe units and both parts
            ctl.write("s0", off, data)
            flat[off:off + len(data)] = data
            t = ctl.trigger("s0")
            cuts[t.id] = bytes(flat)
        for info in ctl.backups("s0"):
            assert ctl.read_backup("s0", info.trigger_id, 0, 2 << 20) == cuts[info.trigger_id]
        assert ctl.read("s0", 0, 2 << 20) == bytes(flat)


def _doc_examples():
    import os
    import re
    text = open(os.path.join(os.path.dirname(__file__), "..", "docs", "stripes.md")).read()
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_the_docs_examples_load():
    examples = _doc_examples()
    assert len(examples) == 2
    first = cfgmod.loads(examples[0], "docs/stripes.md")
    assert first.luns[0].stripe == 64 << 10 and len(first.luns[0].parts) == 2
    with Controller.from_config(first) as ctl:
        assert ctl.luns["s0"].size == 256 << 20
    second = cfgmod.loads(examples[1], "docs/stripes.md")
    assert second.luns[0].backup.stripe == 16 << 10 and len(second.luns[0].backup.parts) == 2
