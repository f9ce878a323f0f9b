"""A slow or vanished board in a pool never stalls the primary or the control channel.

Real processes: `splitpoint emulate` boards (a 200 kB/s link, or one killed with SIGKILL) as pool
members of a real `splitpoint serve`, probed with PINGs on the control channel and NBD requests
on the primary. The deadline of each probe (DEADLINE) only ends a stalled one: before the device
I/O left the loop, one resync slice over such a link froze both for 20 s, an unplug for 5 s.
"""
import json
import os
import time

import pytest

from board_procs import boards, pool_config  # noqa: F401 (boards is a fixture)
from nbd_raw import RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient, ControlError

DEADLINE = 1.5     # seconds a probe may take before it counts as stalled
PROBE_FOR = 3.0    # seconds of probing while the resync runs


def member_states(control) -> list:
    return [(m["state"], m.get("error")) for m in control.status()["luns"][0]["pools"][0]["members"]]


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def test_resync_over_a_slow_board_never_stalls_ping_or_primary_reads(tmp_path, boards):
    slow = boards(size="4M", rate=200_000)
    image = tmp_path / "lun0.img"
    image.write_bytes(os.urandom(4 << 20))
    cfg = tmp_path / "pool.toml"
    # member 0 (the slow board) starts active and resyncs all 4 MiB of the file: about 20 s at 200 kB/s
    cfg.write_text(pool_config(f"file://{image}", [slow.url(), "ram://m1?size=4M&block=512"]))
    with ServerProcess(str(tmp_path / "serve"), config=str(cfg)) as server:
        nbd = RawClient(server.socket, timeout=DEADLINE).connect("lun0")
        pings, reads = [], []
        try:
            with ControlClient(server.control, DEADLINE) as control:
                end = time.monotonic() + PROBE_FOR
                while time.monotonic() < end:
                    pings.append(timed(lambda: control.ask("PING") == "PONG" or pytest.fail("no PONG")))
                    reads.append(timed(lambda: nbd.read(0, 4096)))
                    time.sleep(0.02)
                trigger = timed(lambda: control.ask("TRIGGER").startswith("OK 1 ") or pytest.fail("no OK"))
                pool = control.status()["luns"][0]["pools"][0]
        except (ControlError, TimeoutError) as exc:
            pytest.fail(f"a probe stalled beyond {DEADLINE} s during the resync: {exc} "
                        f"(pings so far {pings}, reads {reads})")
        print(f"max PING {max(pings):.3f} s, max primary READ {max(reads):.3f} s over {len(pings)} probes, "
              f"TRIGGER {trigger:.3f} s")
        member = pool["members"][0]
        assert member["state"] == "cutting" and member["resync"]["copied"] > 0, member   # cut while resyncing
        assert nbd.read(0, 65536) == image.read_bytes()[:65536]
        nbd.disconnect()


def test_a_killed_board_never_blocks_primary_writes_and_is_logged(tmp_path, boards):
    board = boards(size="1M")
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_config("ram://lun0?size=1M&block=512", [board.url(), "ram://m1?size=1M&block=512"]))
    with ServerProcess(str(tmp_path / "serve"), config=str(cfg)) as server:
        with ControlClient(server.control, 30) as control:
            deadline = time.monotonic() + 60
            while member_states(control)[0][0] != "active":   # the board is in sync and mirroring
                assert time.monotonic() < deadline, control.status()
                time.sleep(0.05)
            nbd = RawClient(server.socket, timeout=DEADLINE).connect("lun0")
            board.kill()
            writes = []
            try:
                for i in range(20):
                    writes.append(timed(lambda: nbd.write(i * 4096, bytes([i + 1]) * 4096)))
            except TimeoutError:
                pytest.fail(f"a primary write stalled beyond {DEADLINE} s after the board was killed "
                            f"(writes so far {writes})")
            print(f"max primary WRITE after the kill {max(writes):.3f} s")
            assert nbd.read(0, 20 * 4096) == b"".join(bytes([i + 1]) * 4096 for i in range(20))
            while member_states(control)[0][0] != "inconsistent":   # demoted once the reconnect timeout ends
                assert time.monotonic() < deadline, control.status()
                time.sleep(0.1)
            status = control.status()
            nbd.disconnect()
            board.start()   # a fresh emulator on the same link: the host reconnects (to a new session)
            while "reconnected" not in server.log():
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.1)
        log = server.log()
    assert "link lost" in log and "demoted" in log, log[-3000:]
    member = status["luns"][0]["pools"][0]["members"][0]
    assert member["error"].startswith("device error: board on"), json.dumps(member)


def test_a_backup_on_a_board_reads_back_through_its_queue(tmp_path, boards):
    members = [boards(size="1M").url(), boards(size="1M").url()]
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_config("ram://lun0?size=1M&block=512", members))
    with ServerProcess(str(tmp_path / "serve"), config=str(cfg)) as server:
        nbd = RawClient(server.socket, timeout=30).connect("lun0")
        image = os.urandom(1 << 20)
        for off in range(0, 1 << 20, 64 << 10):
            nbd.write(off, image[off:off + (64 << 10)])
        with ControlClient(server.control, 30) as control:
            assert control.ask("TRIGGER").startswith("OK 1 ")
            nbd.write(0, b"\x01" * 4096)        # after the cut: never in t1
            deadline = time.monotonic() + 60
            while not control.status()["luns"][0]["backups"]:
                assert time.monotonic() < deadline, control.status()
                time.sleep(0.05)
        nbd.disconnect()
        backup = RawClient(server.socket, timeout=30).connect("lun0.t1")
        assert backup.read(0, 1 << 20) == image
        backup.disconnect()
