"""`splitpoint status` tables: what a STATUS document shows a user at a glance.

``render`` turns the STATUS JSON into tables; these tests give it documents with the
states a user must not miss (a member whose board went away, a backup whose digest is
still being computed, a board link's counters) and read the text it prints.
"""
from __future__ import annotations

import io

from rich.console import Console

from splitpoint.commands.status import render


def _text(status: dict) -> str:
    out = io.StringIO()
    render(status, Console(file=out, width=200, highlight=False, color_system=None))
    return out.getvalue()


def _status(**member) -> dict:
    m = {"index": 1, "url": "board://emu-uart-3m?port=/tmp/b", "state": "frozen", "role": "backup",
         "consistent": True, "trigger_id": 3, "label": "nightly", "seq": 41, "epoch": 3, "time": 1.7e9,
         "digest": "00000000deadbeef", "digest_progress": None}
    m.update(member)
    return {"luns": [{"name": "lun0", "size": 1 << 20, "block_size": 4096, "state": "ok", "epoch": 3,
                      "triggers": 3, "pools": [{"name": "lun0.pool", "state": "ok", "rotations": 3,
                                                "members": [m]}]}],
            "queue": {"depth": 0, "capacity": 1024, "next_seq": 42}, "counters": {}}


def test_a_member_whose_link_is_down_says_so():
    assert "LINK DOWN" in _text(_status(link_down=True))
    assert "LINK DOWN" not in _text(_status())


def test_a_backup_whose_digest_is_pending_says_so():
    text = _text(_status(digest=None))
    assert "digest pending" in text
    assert "digest pending" not in _text(_status())


def test_board_links_are_listed_with_their_counters():
    status = _status()
    status["devices"] = [{"device": "lun0.pool[1]", "url": "board://emu-uart-3m?port=/tmp/b",
                          "link": {"up": False, "retransmits": 7, "reconnects": 2, "timeouts": 1,
                                   "outstanding": 3, "window": 8, "gone": "board stopped answering"},
                          "queue": {"queued_ops": 5, "queued_bytes": 20480, "rate": 1000000}}]
    text = _text(status)
    assert "lun0.pool[1]" in text and "down" in text
    assert "7 retransmit" in text and "2 reconnect" in text
    assert "board stopped answering" in text
    assert "5 queued" in text
