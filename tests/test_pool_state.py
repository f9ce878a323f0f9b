"""Each pool saves and restores its own record: what a clean close recorded comes back as it was."""
from __future__ import annotations

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.pool import EMPTY, FROZEN

SIZE = 256 << 10


def make(tmp_path, member_scheme="file"):
    if member_scheme == "file":
        members = ", ".join(f'"file://{tmp_path}/b{i}.img?size={SIZE}&create=1"' for i in range(3))
    else:
        members = ", ".join(f'"ram://?size={SIZE}"' for _ in range(3))
    return Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = "4K"
digest_region = "16K"
[[lun]]
name = "lun0"
url = "file://{tmp_path}/lun0.img?size={SIZE}&create=1"
[lun.pool]
members = [{members}]
"""))


def cut_twice(ctl) -> dict:
    ctl.write("lun0", 0, b"\x11" * 8192)
    ctl.trigger("lun0", "one")
    ctl.write("lun0", 4096, b"\x22" * 4096)
    ctl.trigger("lun0", "two")
    ctl.write("lun0", 0, b"\x33" * 4096)
    ctl.settle()
    return ctl.luns["lun0"].pools[0].save_state()


def test_a_clean_record_restores_every_member_of_a_persistent_pool(tmp_path):
    ctl = make(tmp_path)
    try:
        saved = cut_twice(ctl)
    finally:
        ctl.close()
    assert [m["state"] for m in saved["members"]] == [FROZEN, FROZEN, "active"]
    again = make(tmp_path)
    try:
        pool = again.luns["lun0"].pools[0]
        report: list = []
        pool.restore_state(saved, clean=True, report=report)
        got = pool.save_state()
        assert report == []                    # a clean restore has nothing to explain
        assert [m["generation"] for m in got["members"]] == [m["generation"] + 1 for m in saved["members"]]
        for doc in (got, saved):
            for m in doc["members"]:
                del m["generation"]            # recycled-or-not counter: +1 so readers of the old run notice
        assert got == saved
        assert [b.label for b in again.backups("lun0")] == ["two", "one"]
    finally:
        again.close()


def test_after_a_crash_a_ram_member_keeps_nothing_and_no_record_is_trusted_blindly(tmp_path):
    ctl = make(tmp_path, member_scheme="ram")
    try:
        saved = cut_twice(ctl)
        pool = ctl.luns["lun0"].pools[0]
        report: list = []
        pool.restore_state(saved, clean=False, report=report)
        assert [m.state for m in pool.members if m is not pool.active] == [EMPTY, EMPTY]
        assert pool.backups() == []
        assert len(report) == 3 and pool.active is not None and pool.active.sweep is not None
    finally:
        ctl.close()
