"""A pool member's board that restarts loses its medium: the pool must notice, with real processes.

Two `splitpoint emulate` boards (RAM media) are the members of `splitpoint serve`'s pool. An
emulator is killed with SIGKILL and started again on the same link, as a board that reset:
- a frozen member's backup is demoted (reason in status, the export refused to a real NBD client);
- an idle active member must not become a backup holding the restarted board's zeros: the next
  cut is either exact (a full resync ran) or not reported consistent at all.
While the board is gone, status shows its member's link down.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from board_procs import EmulatedBoard
from nbd_raw import RawClient
from splitpoint.demo import ServerProcess

SIZE = 1 << 20
FAST = "rto=0.05&rate=200M&retries=16&reconnect=30"
DEADLINE = 90.0   # ends a hung wait only; every condition below is waited for, never timed

pytestmark = pytest.mark.xdist_group("board_restart")


def emulated_board(workdir, index: int) -> EmulatedBoard:
    """`splitpoint emulate` on a fixed link path, started again on the same link after a kill."""
    return EmulatedBoard(workdir, f"board{index}", size=str(SIZE))


def until(cond, what: str):
    end = time.monotonic() + DEADLINE
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def control(server, *args) -> str:
    got = subprocess.run([sys.executable, "-m", "splitpoint", *args, "--control", server.control],
                         capture_output=True, text=True, timeout=120)
    assert got.returncode in (0, 1), got.stderr
    return got.stdout


_clients: dict = {}


def status(server) -> dict:
    """STATUS over one control connection per server (a CLI per poll would cost a process each)."""
    from splitpoint.firmware.frontend.control import ControlClient

    client = _clients.get(server.control)
    if client is None:
        client = _clients[server.control] = ControlClient(server.control, 60)
    return client.status()


def pool_of(st) -> dict:
    return st["luns"][0]["pools"][0]


def backup_ids(st) -> set[int]:
    return {b["trigger_id"] for b in st["luns"][0]["backups"]}


def trigger(server, label) -> int:
    out = control(server, "trigger", label)
    m = re.search(r"OK (\d+) seq=(\d+)", out)
    assert m, out
    return int(m[1])


def nbdinfo_ok(server, export: str) -> bool:
    got = subprocess.run(["nbdinfo", server.uri(export)], capture_output=True, text=True, timeout=60)
    return got.returncode == 0


def read_export(server, export: str, tmp_path) -> bytes:
    out = tmp_path / f"{export}.img"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", server.uri(export), str(out)],
                   check=True, capture_output=True, timeout=120)
    return out.read_bytes()


def restart(board: Board, server, index: int) -> None:
    """kill -9 the board's emulator, see its member's link go down, start it again and see it back."""
    board.kill()
    until(lambda: pool_of(status(server))["members"][index].get("link_down"),
          f"status to show member {index}'s link down")
    board.start()
    until(lambda: not pool_of(status(server))["members"][index].get("link_down"),
          f"member {index}'s link to come back")


@pytest.fixture
def rig(tmp_path):
    boards = [emulated_board(str(tmp_path), i).start(timeout=DEADLINE) for i in range(2)]
    members = ", ".join(f'"board://emu-usb-fs?port={b.link}&{FAST}"' for b in boards)
    cfg = tmp_path / "boards.toml"
    cfg.write_text(f'[[lun]]\nname = "lun0"\nurl = "ram://lun0?size={SIZE}&block=512"\n'
                   f'[lun.pool]\nmirror = "sync"\nmembers = [{members}]\n')
    server = ServerProcess(str(tmp_path / "serve"), config=str(cfg)).start()
    try:
        yield server, boards
    finally:
        client = _clients.pop(server.control, None)
        if client is not None:
            client.close()
        server.stop()
        for b in boards:
            b.stop()


def test_restarted_boards_never_give_a_false_backup(rig, tmp_path):
    server, boards = rig
    c = RawClient(server.socket).connect("lun0")
    for off in range(0, SIZE, 65536):
        c.write(off, b"\xaa" * 65536)
    assert c.do("FLUSH").error == 0
    until(lambda: pool_of(status(server))["state"] == "mirroring", "the first member's resync")
    t1 = trigger(server, "t1")
    st = until(lambda: (lambda s: s if t1 in backup_ids(s) and all(
        m["digest"] for m in pool_of(s)["members"] if m["state"] == "frozen") else None)(status(server)),
        "t1 to be a backup with its digest")
    frozen = next(m["index"] for m in pool_of(st)["members"] if m.get("trigger_id") == t1)
    assert read_export(server, f"lun0.t{t1}", tmp_path) == b"\xaa" * SIZE

    # case 1: the frozen member's board restarts with an empty medium
    restart(boards[frozen], server, frozen)
    st = status(server)
    member = pool_of(st)["members"][frozen]
    assert t1 not in backup_ids(st), st["luns"][0]["backups"]
    assert not member["consistent"] and member["state"] == "inconsistent", member
    assert "medium" in member["error"] or "lost its session" in member["error"], member
    assert not nbdinfo_ok(server, f"lun0.t{t1}"), "the demoted backup is still exported"
    assert "demoted (backup t1)" in server.log(), "the demotion was not logged"
    assert not nbdinfo_ok(server, "lun0.latest")

    # case 2: the idle active member's board restarts; then a write and a TRIGGER
    until(lambda: pool_of(status(server))["state"] == "mirroring", "the active member to be in sync")
    active = pool_of(status(server))["active"]
    assert active != frozen
    restart(boards[active], server, active)
    c = RawClient(server.socket).connect("lun0")
    c.write(0, b"\xbb" * 4096)
    assert c.do("FLUSH").error == 0
    t2 = trigger(server, "t2")
    want = b"\xbb" * 4096 + b"\xaa" * (SIZE - 4096)

    def settled():
        s = status(server)
        m = next((m for m in pool_of(s)["members"] if m.get("trigger_id") == t2), None)
        if t2 in backup_ids(s) and m is not None and m["digest"]:
            return "backup"
        if t2 not in backup_ids(s) and (m is None or m["state"] == "inconsistent"):
            return "refused"
        return None
    outcome = until(settled, "t2 to become a backup or be refused")
    if outcome == "backup":
        assert read_export(server, f"lun0.t{t2}", tmp_path) == want
        verdict = control(server, "verify", str(t2))
        assert ": OK" in verdict, verdict
    else:
        assert not nbdinfo_ok(server, f"lun0.t{t2}")
    assert read_export(server, "lun0", tmp_path) == want
