"""No silent loss: a TRIGGER that recycles the LUN's only consistent backup while the new cut is still
completing says so in its reply, its log and STATUS, or is refused when the pool says refuse_last_copy."""
from __future__ import annotations

import logging

import pytest

from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.retention import LastCopyError
from splitpoint.firmware.triggers import ControlLine

MiB = 1 << 20


def slow_pool_of_two(refuse: bool | None = None) -> Controller:
    """A pool of 2 whose resync copies one 64 KiB chunk a second: a rotation stays mid-resync."""
    extra = "" if refuse is None else f"refuse_last_copy = {'true' if refuse else 'false'}\n"
    return Controller.from_config(config.loads(f"""
[controller]
chunk_size = "64K"
[resync]
rate = "64K"
[[lun]]
name = "lun0"
url = "ram://lun0?size=4M"
[lun.pool]
members = ["ram://b0?size=4M", "ram://b1?size=4M"]
{extra}"""))


def cut_first_backup(ctl: Controller) -> None:
    ctl.write("lun0", 0, b"\x51" * MiB)   # 16 chunks for the next member to copy
    assert ctl.trigger("lun0").warning is None
    assert [b.trigger_id for b in ctl.backups("lun0")] == [1]
    assert ctl.luns["lun0"].pools[0].members[1].sweep is not None, "the resync finished too soon for this test"


def test_recycling_the_only_backup_mid_resync_is_carried_out_with_a_warning(caplog):
    ctl = slow_pool_of_two()
    try:
        cut_first_backup(ctl)
        ctl.write("lun0", 0, b"\x52" * 4096)
        lines = []
        with caplog.at_level(logging.WARNING, logger="splitpoint.retention"):
            ControlLine(ctl, "lun0").handle("TRIGGER second", lines.append)
            ctl.drain()
        assert len(lines) == 1 and lines[0].startswith("OK 2 seq=")
        assert lines[0].endswith(" warning=no-consistent-backup recycled=lun0.t1")
        assert any("TRIGGER 2 left no consistent backup" in r.getMessage() for r in caplog.records)
        status = ctl.status()["luns"][0]
        assert status["backups"] == []
        assert status["last_copy_warning"] == "t2: no-consistent-backup recycled=lun0.t1"
        ctl.settle()   # the cut completes: a backup again, and the warning is gone from STATUS
        status = ctl.status()["luns"][0]
        assert [b["trigger_id"] for b in status["backups"]] == [2]
        assert status["last_copy_warning"] is None
        assert ctl.read_backup("lun0", 2, 0, 8192) == b"\x52" * 4096 + b"\x51" * 4096
    finally:
        ctl.close()


def test_refuse_last_copy_refuses_the_trigger_and_cuts_nothing():
    ctl = slow_pool_of_two(refuse=True)
    try:
        cut_first_backup(ctl)
        lun = ctl.luns["lun0"]
        epoch, next_id = lun.epoch, lun.next_trigger_id
        with pytest.raises(LastCopyError, match=r"recycle lun0\.t1, the only consistent backup"):
            ctl.trigger("lun0")
        lines = []
        ControlLine(ctl, "lun0").handle("TRIGGER", lines.append)
        ctl.drain()
        assert lines[0].startswith("ERR trigger failed: this TRIGGER would recycle lun0.t1")
        assert (lun.epoch, lun.next_trigger_id) == (epoch, next_id)
        assert [b.trigger_id for b in ctl.backups("lun0")] == [1]
        assert ctl.read_backup("lun0", 1, 0, 4096) == b"\x51" * 4096
        ctl.settle()   # once the resync is done, the same TRIGGER leaves t2 a backup at once
        result = ctl.trigger("lun0")
        assert result.id == 2 and result.warning is None
    finally:
        ctl.close()


def test_a_trigger_that_keeps_a_backup_has_no_warning():
    ctl = slow_pool_of_two(refuse=False)
    try:
        cut_first_backup(ctl)
        ctl.settle()
        assert ctl.trigger("lun0").warning is None
        assert ctl.status()["luns"][0]["last_copy_warning"] is None
    finally:
        ctl.close()


def test_refuse_last_copy_must_be_a_boolean():
    with pytest.raises(config.ConfigError, match="refuse_last_copy must be true or false"):
        config.loads('[[lun]]\nname = "lun0"\nurl = "ram://?size=1M"\n[lun.pool]\nmembers = ["ram://?size=1M"]\n'
                     'refuse_last_copy = "yes"\n')


def test_status_table_shows_pins_and_the_last_copy_warning():
    import io

    from rich.console import Console

    from splitpoint.commands.status import render

    ctl = slow_pool_of_two()
    try:
        cut_first_backup(ctl)
        ctl.pin("lun0.t1")
        out = io.StringIO()
        render(ctl.status(), Console(file=out, width=200, highlight=False, color_system=None))
        assert "lun0.t1 (pinned)" in out.getvalue()
        ctl.unpin("lun0.t1")
        ctl.trigger("lun0")
        out = io.StringIO()
        render(ctl.status(), Console(file=out, width=200, highlight=False, color_system=None))
        assert "warning: no consistent backup until the last cut completes" in out.getvalue()
    finally:
        ctl.close()


def test_status_table_shows_a_resumed_restore():
    import io

    from rich.console import Console

    from splitpoint.commands.status import render

    doc = {"luns": [{"name": "lun0", "size": 1 << 20, "block_size": 512, "pools": [], "restoring": None,
                     "restore_note": "a RESTORE from lun0.t1 was interrupted by a crash and resumed (65536 bytes)"}]}
    out = io.StringIO()
    render(doc, Console(file=out, width=200, highlight=False, color_system=None))
    assert "restore: a RESTORE from lun0.t1 was interrupted by a crash and resumed" in out.getvalue()
