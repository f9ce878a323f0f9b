"""A RESTORE interrupted by kill -9 is finished at the restart, before any request is served."""
from __future__ import annotations

import json

import pytest

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlError, exchange

CHUNK = 64 << 10
SIZE = 4 << 20


def write_config(path, images, meta, faults: str = "") -> None:
    lun = f"file://{images}/lun0.img?size={SIZE}&create=1" + (f"&faults={faults}" if faults else "")
    members = [f"file://{images}/b{i}.img?size={SIZE}&create=1" for i in range(2)]
    path.write_text(f"""
[controller]
chunk_size = "64K"
metadata_dir = "{meta}"
[[lun]]
name = "lun0"
url = "{lun}"
[lun.pool]
members = {json.dumps(members)}
""")


@pytest.mark.parametrize("killed_after", [1, 9])
def test_kill_9_mid_restore_resumes_at_the_restart(tmp_path, killed_after):
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "sp.toml"
    # the primary's writes: 16 before the cut, 16 after it, then the RESTORE's 16 (one per changed chunk)
    write_config(cfg, images, tmp_path / "meta", faults=f"kill={32 + killed_after}")
    first = ServerProcess(str(tmp_path / "run1"), config=str(cfg)).start()
    c = RawClient(first.socket).connect("lun0")
    for i in range(16):
        c.write(2 * i * CHUNK, bytes([0x10 + i]) * CHUNK)
    assert exchange(first.control, "TRIGGER base", 30).startswith("OK 1")
    for i in range(16):
        c.write(2 * i * CHUNK, bytes([0x80 + i]) * CHUNK)
    with pytest.raises(ControlError):     # the server dies by SIGKILL in the middle of the copy
        exchange(first.control, "RESTORE lun0.t1", 10)
    assert first.stop() == -9, first.log()

    write_config(cfg, images, tmp_path / "meta")
    second = ServerProcess(str(tmp_path / "run2"), config=str(cfg)).start()
    try:
        status = json.loads(exchange(second.control, "STATUS", 30))
        lun = status["luns"][0]
        assert status["metadata"]["recovered"] == "crash"
        assert lun["restoring"] is None
        assert "interrupted by a crash and resumed" in lun["restore_note"]
        data = RawClient(second.socket).connect("lun0")
        backup = RawClient(second.socket).connect("lun0.t1")
        assert data.read(0, SIZE) == backup.read(0, SIZE)
        for i in range(16):
            assert data.read(2 * i * CHUNK, 4096) == bytes([0x10 + i]) * 4096
    finally:
        assert second.stop() == 0, second.log()
