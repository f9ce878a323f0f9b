"""A backup whose bytes stop matching its manifest is demoted by the verify that finds it."""
from __future__ import annotations

import os

from splitpoint import config as cfgmod
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller

import pytest

SIZE = 256 << 10


def test_failed_verify_demotes_the_backup(tmp_path):
    members = ", ".join(f'"file://{tmp_path}/b{i}.img?size={SIZE}&create=1"' for i in range(2))
    ctl = Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
[[lun]]
name = "lun0"
url = "file://{tmp_path}/lun0.img?size={SIZE}&create=1"
[lun.pool]
members = [{members}]
"""))
    try:
        ctl.write("lun0", 0, b"\xaa" * SIZE)
        ctl.trigger("lun0")
        ctl.settle()
        [ok] = ctl.verify("lun0", 1)
        assert ok.ok
        fd = os.open(tmp_path / "b0.img", os.O_WRONLY)   # the medium changes behind the controller's back
        os.pwrite(fd, b"\x00" * 4096, 8192)
        os.close(fd)
        [bad] = ctl.verify("lun0", 1)
        assert not bad.ok and bad.bad_regions == [(0, 16384)]
        assert ctl.backups("lun0") == []
        with pytest.raises(E.NoSuchBackupError):
            ctl.read_backup("lun0", 1, 0, 4096)
        doc = ctl.status()["luns"][0]["pools"][0]["members"][0]
        assert doc["consistent"] is False and "verify found a mismatch" in doc["error"]
        assert ctl.verify("lun0") == []
    finally:
        ctl.close()
