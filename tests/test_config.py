"""Configuration: the embedded default, every key checked, unknown keys named with the valid ones."""
from __future__ import annotations

import pytest

from splitpoint import config as cfgmod
from splitpoint.config import ConfigError

GOOD = """
[controller]
chunk_size = "16K"
ring_capacity = 1024
metadata_dir = "/tmp/sp-meta"
digest_region = "4M"
async_queue_ops = 128
async_queue_bytes = "8M"

[resync]
rate = "100M"
deadline = 30
slice = "1M"

[[lun]]
name = "lun0"
url = "file:///tmp/lun0.img?size=1G&create=1"

[lun.pool]
mirror = "async"
members = ["file:///tmp/b0.img?size=1G&create=1", "file:///tmp/b1.img?size=1G&create=1"]

[lun.backup]
url = "file:///tmp/pb.img?size=1G&create=1"
mirror = "sync"

[lun.backup.pool]
members = ["ram://?size=1G"]

[[lun]]
name = "db1"
url = "ram://?size=64M"
"""


def test_default_is_designs_embedded_default():
    cfg = cfgmod.default()
    [lun] = cfg.luns
    assert lun.name == "lun0" and "size=256M" in lun.url and lun.url.startswith("ram://")
    assert len(lun.pool.members) == 3 and lun.pool.mirror == "sync"
    assert lun.backup is None and cfg.metadata_dir is None
    assert cfg.chunk_size == 64 << 10


def test_full_configuration_parses():
    cfg = cfgmod.loads(GOOD)
    assert cfg.chunk_size == 16 << 10 and cfg.ring_capacity == 1024 and cfg.metadata_dir == "/tmp/sp-meta"
    assert cfg.digest_region == 4 << 20 and cfg.async_queue_ops == 128 and cfg.async_queue_bytes == 8 << 20
    assert cfg.resync.rate == 100 << 20 and cfg.resync.deadline == 30.0 and cfg.resync.slice == 1 << 20
    lun0, db1 = cfg.luns
    assert lun0.pool.mirror == "async" and len(lun0.pool.members) == 2
    assert lun0.backup.mirror == "sync" and lun0.backup.pool.members == ("ram://?size=1G",)
    assert db1.pool is None and db1.backup is None


def test_load_reads_a_file(tmp_path):
    path = tmp_path / "sp.toml"
    path.write_text(GOOD)
    assert cfgmod.load(str(path)).source == str(path)
    with pytest.raises(ConfigError, match="cannot read"):
        cfgmod.load(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("text,message", [
    ("[[lun]]\nname='a'\nurl='ram://'\ncolour='blue'", "unknown key 'colour' in \\[lun a\\]; valid keys: backup, layout, name, parts, pool, stripe, url"),
    ("[controller]\nchunksize=4096\n[[lun]]\nname='a'\nurl='ram://'", "unknown key 'chunksize' in \\[controller\\]; valid keys: "),
    ("[resync]\nspeed=1\n[[lun]]\nname='a'\nurl='ram://'", "unknown key 'speed' in \\[resync\\]"),
    ("[mirror]\nmode='sync'\n[[lun]]\nname='a'\nurl='ram://'", "unknown key 'mirror' in \\[top level\\]; valid keys: controller, device, group, lun, nbd, resync"),
    ("[[lun]]\nname='a'\nurl='ram://'\n[lun.pool]\nmembers=['ram://']\nmode='sync'", "unknown key 'mode' in \\[lun a.pool\\]; valid keys: members, mirror"),
    ("[[lun]]\nname='a'\nurl='ram://'\n[lun.backup]\nurl='ram://'\nsize=1", "unknown key 'size' in \\[lun a.backup\\]"),
    ("", "no LUNs"),
    ("[lun.lun0]\nurl='ram://'", "must be an array of tables: write each LUN as \\[\\[lun\\]\\]"),
    ("[lun]\nname='a'\nurl='ram://'", "must be an array of tables"),
    ("[[lun]]\nname='a'", "needs url"),
    ("[[lun]]\nname='lun.0'\nurl='ram://'", "name must be letters and digits"),
    ("[[lun]]\nname='a'\nurl='ram://'\n[[lun]]\nname='a'\nurl='ram://'", "used twice"),
    ("[[lun]]\nname='a'\nurl='/dev/sda'", "must be a device URL"),
    ("[[lun]]\nname='a'\nurl='ram://'\n[lun.pool]\nmembers=[]", "non-empty list"),
    ("[[lun]]\nname='a'\nurl='ram://'\n[lun.pool]\nmembers=['ram://']\nmirror='maybe'", "mirror must be one of sync, async"),
    ("[controller]\nchunk_size='3K'\n[[lun]]\nname='a'\nurl='ram://'", "power of two"),
    ("[controller]\nchunk_size='lots'\n[[lun]]\nname='a'\nurl='ram://'", "chunk_size"),
    ("[controller]\nring_capacity=true\n[[lun]]\nname='a'\nurl='ram://'", "ring_capacity must be a size"),
    ("[resync]\ndeadline=-1\n[[lun]]\nname='a'\nurl='ram://'", "deadline must be a number of seconds"),
    ("[[lun]\nname='a'", "not valid TOML"),
])
def test_bad_configuration_names_the_problem(text, message):
    with pytest.raises(ConfigError, match=message):
        cfgmod.loads(text)


def test_public_api_reexports_the_controller():
    from splitpoint import api

    ctl = api.Controller.from_config(api.loads_config(
        "[[lun]]\nname='a'\nurl='ram://?size=64K'\n[lun.pool]\nmembers=['ram://?size=64K','ram://?size=64K']"))
    try:
        ctl.write("a", 0, b"\x01" * 512, fua=True)
        t = ctl.trigger("a", "api")
        assert isinstance(t, api.TriggerResult)
        assert ctl.read_backup("a", t.id, 0, 512) == b"\x01" * 512
        assert all(name in dir(api) for name in api.__all__)
    finally:
        ctl.close()
