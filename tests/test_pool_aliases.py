"""Two configuration keys naming one device are refused at load, with both keys in one line."""
from __future__ import annotations

import os

import pytest

from splitpoint import config as cfgmod
from splitpoint.config import ConfigError


def lun(name, url, members=(), backup=None, backup_members=()):
    text = f'[[lun]]\nname = "{name}"\nurl = "{url}"\n'
    if members:
        text += "[lun.pool]\nmembers = [" + ", ".join(f'"{m}"' for m in members) + "]\n"
    if backup:
        text += f'[lun.backup]\nurl = "{backup}"\n'
        if backup_members:
            text += "[lun.backup.pool]\nmembers = [" + ", ".join(f'"{m}"' for m in backup_members) + "]\n"
    return text


def refused(text):
    with pytest.raises(ConfigError) as info:
        cfgmod.loads(text, source="t.toml")
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_aliased_devices_are_refused(tmp_path):
    a = f"file://{tmp_path}/a.img?size=1M&create=1"
    b = f"file://{tmp_path}/b.img?size=1M&create=1"
    c = f"file://{tmp_path}/c.img?size=1M&create=1"
    p = tmp_path / "a.img"
    # a member that is the primary's own file
    assert refused(lun("lun0", a, [b, a])) == \
        f"t.toml: luns[0].pool.members[1] and luns[0].url name the same device {p}"
    # the same member twice, spelled differently
    assert refused(lun("lun0", a, [b, f"file://{tmp_path}/./b.img?size=1M"])) == \
        f"t.toml: luns[0].pool.members[1] and luns[0].pool.members[0] name the same device {tmp_path / 'b.img'}"
    # two LUNs on one file
    assert "luns[1].url and luns[0].url" in refused(lun("lun0", a, [b]) + lun("lun1", a, [c]))
    # a primary backup LUN aliasing the primary, or one of its pool's members
    assert "luns[0].backup.url and luns[0].url" in refused(lun("lun0", a, backup=a))
    assert "luns[0].backup.pool.members[0] and luns[0].backup.url" in refused(
        lun("lun0", a, backup=b, backup_members=[b]))
    # the same inode under two names (a hard link), and through a symlink
    p.write_bytes(bytes(1 << 20))
    os.link(p, tmp_path / "hard.img")
    os.symlink(p, tmp_path / "soft.img")
    assert "luns[0].pool.members[0] and luns[0].url" in refused(
        lun("lun0", a, [f"file://{tmp_path}/hard.img"]))
    assert "luns[0].pool.members[0] and luns[0].url" in refused(
        lun("lun0", a, [f"file://{tmp_path}/soft.img"]))
    # the same board port, and the same NBD export
    assert "luns[0].pool.members[1] and luns[0].pool.members[0] name the same device port /tmp/x" in refused(
        lun("lun0", "ram://?size=1M", ["board://emu-uart-3m?port=/tmp/x", "serial:///tmp/x"]))
    assert "luns[0].pool.members[1] and luns[0].pool.members[0]" in refused(
        lun("lun0", "ram://?size=1M", ["nbd://127.0.0.1:10809/e", "nbd://127.0.0.1:10809/e"]))


def test_distinct_devices_are_accepted(tmp_path):
    cfg = cfgmod.loads(lun("lun0", f"file://{tmp_path}/a.img", [f"file://{tmp_path}/b.img", "ram://?size=1M",
                                                                 "ram://?size=1M", "nbd://127.0.0.1:10809/e",
                                                                 "nbd://127.0.0.1:10809/f"]))
    assert len(cfg.luns[0].pool.members) == 5
