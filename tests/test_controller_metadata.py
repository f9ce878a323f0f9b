"""Metadata: crash-safe records, clean restarts that resume, crash restarts that trust nothing unproven."""
from __future__ import annotations

import os

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.errors import MetadataError
from splitpoint.firmware.metadata import MetadataStore

SIZE = 256 << 10


def test_records_round_trip_with_growing_generations(tmp_path):
    store = MetadataStore(str(tmp_path))
    g1 = store.write_json("a.state", {"x": 1})
    g2 = store.write_json("a.state", {"x": 2})
    assert g2 > g1
    assert store.read_json("a.state") == (g2, {"x": 2})
    assert store.read("missing") is None
    again = MetadataStore(str(tmp_path))          # a new store continues the generations
    assert again.write_json("b.state", {}) > g2


def test_torn_or_corrupt_records_are_detected(tmp_path):
    store = MetadataStore(str(tmp_path))
    store.write_json("a.state", {"x": 1})
    path = tmp_path / "a.state"
    raw = bytearray(path.read_bytes())
    raw[-2] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(MetadataError, match="CRC"):
        store.read("a.state")
    path.write_bytes(bytes(raw[:10]))
    with pytest.raises(MetadataError, match="truncated"):
        store.read("a.state")
    path.write_bytes(b"not a record at all, just text")
    with pytest.raises(MetadataError, match="not a splitpoint metadata record"):
        store.read("a.state")
    (tmp_path / "b.state.tmp").write_bytes(b"half-written")
    MetadataStore(str(tmp_path))
    assert not (tmp_path / "b.state.tmp").exists()   # an interrupted write is discarded


def test_clean_flag(tmp_path):
    store = MetadataStore(str(tmp_path))
    assert not store.was_clean()
    store.mark_clean()
    assert store.was_clean()
    store.mark_running()
    assert not store.was_clean()


def file_config(tmp_path, pool=3, cascade=False, member_scheme="file", resync=""):
    d = tmp_path

    def url(name):
        if member_scheme == "ram":
            return f"ram://?size={SIZE}"
        return f"file://{d}/{name}.img?size={SIZE}&create=1"
    members = ", ".join(f'"{url(f"m{i}")}"' for i in range(pool))
    text = f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
metadata_dir = "{d}/meta"
[resync]
{resync}
[[lun]]
name = "lun0"
url = "file://{d}/lun0.img?size={SIZE}&create=1"
"""
    if cascade:
        text += f'[lun.backup]\nurl = "file://{d}/pb.img?size={SIZE}&create=1"\n[lun.backup.pool]\nmembers = [{members}]\n'
    else:
        text += f"[lun.pool]\nmembers = [{members}]\n"
    return cfgmod.loads(text)


def fill(ctl, value, chunks=range(0, SIZE // 4096)):
    for c in chunks:
        ctl.write("lun0", c * 4096, bytes([value]) * 4096)


def crash(ctl):
    """Stop without the clean close: devices released, nothing persisted, no CLEAN flag."""
    ctl._close_devices()


def test_clean_restart_resumes_without_resync(tmp_path):
    ctl = Controller.from_config(file_config(tmp_path))
    assert ctl.recovered == "fresh"
    ctl.settle()
    fill(ctl, 1)
    t1 = ctl.trigger("lun0", "one")
    fill(ctl, 2, range(4))
    ctl.trigger("lun0", "two")
    ctl.settle()
    before = [(b.trigger_id, b.label, b.digest) for b in ctl.backups("lun0")]
    ctl.close()

    ctl = Controller.from_config(file_config(tmp_path))
    try:
        assert ctl.recovered == "clean"
        pool = ctl.luns["lun0"].pools[0]
        assert pool.active.index == 2 and pool.active.sweep is None
        assert [(b.trigger_id, b.label, b.digest) for b in ctl.backups("lun0")] == before
        assert ctl.read_backup("lun0", t1.id, 0, 4096) == bytes([1]) * 4096
        assert all(r.ok for r in ctl.verify("lun0"))
        assert ctl.trigger("lun0").id == 3      # ids continue
        # an incremental resync still works: the epoch maps came back too
        m0 = pool.members[0]
        assert m0.sweep is not None and m0.sweep.count_total() is None
        assert m0.sweep.total == 4 * 4096      # only the four chunks written since TRIGGER 1
    finally:
        ctl.close()


def test_clean_restart_resumes_a_resync_in_progress(tmp_path):
    cfg = file_config(tmp_path, pool=2, resync='rate = "4K"')
    ctl = Controller.from_config(cfg)
    ctl.settle()
    fill(ctl, 3)
    ctl.trigger("lun0")
    member = ctl.luns["lun0"].pools[0].active
    assert member.sweep is not None and not member.sweep.done
    cursor = member.sweep.cursor
    ctl.close()
    ctl = Controller.from_config(cfg)
    try:
        member = ctl.luns["lun0"].pools[0].active
        assert member.state == "syncing" and member.sweep.cursor == cursor
        ctl.settle()
        assert member.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_crash_restart_keeps_proven_backups_and_resyncs_the_rest(tmp_path):
    ctl = Controller.from_config(file_config(tmp_path))
    ctl.settle()
    fill(ctl, 4)
    ctl.trigger("lun0", "proven")
    ctl.settle()                               # digest done, member flushed, manifest persisted
    fill(ctl, 5, range(8))
    ctl.trigger("lun0", "pending")             # in sync at the cut: flushed and recorded, digest not yet
    image = ctl.read("lun0", 0, SIZE)
    assert ctl.luns["lun0"].pools[0].members[1].manifest.digest is None
    crash(ctl)

    ctl = Controller.from_config(file_config(tmp_path))
    try:
        assert ctl.recovered == "crash"
        pool = ctl.luns["lun0"].pools[0]
        assert [b.label for b in ctl.backups("lun0")] == ["pending", "proven"]
        assert [m.state for m in pool.members] == ["frozen", "frozen", "syncing"]
        assert pool.active.sweep.since == 0       # the epoch maps cannot be trusted: full resync
        assert [r.pending for r in ctl.verify("lun0")] == [True, False]   # newest first
        assert ctl.read_backup("lun0", 2, 0, SIZE) == image
        ctl.settle()                              # the pending digest is computed after the restart
        assert pool.members[1].manifest.digest is not None
        assert all(r.ok for r in ctl.verify("lun0"))
        assert ctl.trigger("lun0").id == 3        # ids never repeat
        ctl.settle()
        assert ctl.read_backup("lun0", 3, 0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_crash_restart_never_trusts_a_cut_still_completing(tmp_path):
    # in sync at its TRIGGER: a backup at once, across a crash too; mid-resync at its TRIGGER: never
    slow = 'rate = "4K"'
    ctl = Controller.from_config(file_config(tmp_path, resync=slow))
    ctl.settle()
    fill(ctl, 4)
    ctl.trigger("lun0", "in-sync")
    ctl.trigger("lun0", "mid-resync")          # the member activated at the first is still copying
    assert [m.state for m in ctl.luns["lun0"].pools[0].members] == ["frozen", "cutting", "syncing"]
    crash(ctl)

    ctl = Controller.from_config(file_config(tmp_path, resync=slow))
    try:
        pool = ctl.luns["lun0"].pools[0]
        assert [b.label for b in ctl.backups("lun0")] == ["in-sync"]
        assert pool.members[1].state == "inconsistent"
        ctl.settle()
        assert ctl.read_backup("lun0", 1, 0, SIZE) == bytes([4]) * SIZE
        assert all(r.ok for r in ctl.verify("lun0"))
    finally:
        ctl.close()


def test_crash_restart_of_a_cascade_resyncs_the_primary_backup_lun(tmp_path):
    ctl = Controller.from_config(file_config(tmp_path, cascade=True))
    ctl.settle()
    fill(ctl, 6)
    ctl.trigger("lun0")
    ctl.settle()
    crash(ctl)
    with open(tmp_path / "pb.img", "r+b") as fh:   # the mirror lost some writes in the crash
        fh.write(bytes(8192))
    ctl = Controller.from_config(file_config(tmp_path, cascade=True))
    try:
        node = ctl.luns["lun0"].backup_node
        assert node.sweep is not None and node.sweep.since == 0
        t = ctl.trigger("lun0")                    # completes the backup LUN's resync at its exact point
        ctl.settle()
        primary = ctl.luns["lun0"].device.read(0, SIZE)
        assert node.device.read(0, SIZE) == primary
        assert ctl.read_backup("lun0", t.id, 0, SIZE) == primary
    finally:
        ctl.close()


def test_ram_members_come_back_empty(tmp_path):
    ctl = Controller.from_config(file_config(tmp_path, member_scheme="ram"))
    fill(ctl, 7, range(4))
    ctl.trigger("lun0")
    ctl.settle()
    assert ctl.backups("lun0")
    ctl.close()
    ctl = Controller.from_config(file_config(tmp_path, member_scheme="ram"))
    try:
        assert ctl.backups("lun0") == []          # their bytes are gone: never a false backup
        ctl.settle()
        pool = ctl.luns["lun0"].pools[0]
        assert pool.active.device.read(0, SIZE) == ctl.luns["lun0"].device.read(0, SIZE)
    finally:
        ctl.close()


def test_metadata_from_another_configuration_is_refused(tmp_path):
    Controller.from_config(file_config(tmp_path, pool=3)).close()
    with pytest.raises(MetadataError, match="move the metadata directory away"):
        Controller.from_config(file_config(tmp_path, pool=2))
    assert os.path.isdir(tmp_path / "meta")


def test_metadata_dir_that_is_a_file_or_unwritable_refuses_to_start(tmp_path):
    (tmp_path / "afile").write_text("x")
    for where, why in ((tmp_path / "afile", "is not a directory"),
                       ("/proc/self/fdinfo", "is not a writable directory")):   # unwritable even for root
        cfg = cfgmod.loads(f'[controller]\nmetadata_dir = "{where}"\n[[lun]]\nname = "lun0"\n'
                           f'url = "file://{tmp_path}/lun0.img?size={SIZE}&create=1"\n')
        with pytest.raises(MetadataError) as info:
            Controller.from_config(cfg)
        msg = str(info.value)
        assert "metadata_dir" in msg and why in msg and str(where) in msg and "\n" not in msg


def test_ram_device_too_large_names_the_lun():
    from splitpoint.firmware.errors import DeviceOpenError
    cfg = cfgmod.loads('[[lun]]\nname = "lun0"\nurl = "ram://?size=64P"\n')
    with pytest.raises(DeviceOpenError) as info:
        Controller.from_config(cfg)
    msg = str(info.value)
    assert msg.startswith("LUN lun0:") and "[Errno" not in msg and "size=" in msg
