"""The host's per-board link counters in `status`, read over the control channel of a real server."""
import subprocess
import time

import pytest

from board_procs import boards, pool_config  # noqa: F401 (boards is a fixture)
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient


def test_status_reports_retransmission_counters_per_board(tmp_path, boards):
    clean = boards(size="2M")
    lossy = boards(size="2M", faults="drop=5%", seed=3)
    cfg = tmp_path / "pool.toml"
    cfg.write_text(pool_config("ram://lun0?size=2M&block=512", [lossy.url(), clean.url()]))   # the lossy one mirrors first
    with ServerProcess(str(tmp_path / "serve"), config=str(cfg)) as server:
        cmds = []
        for i in range(40):
            cmds += ["-c", f"write -P {i % 250 + 1} {i * 16384} 16384"]
        got = subprocess.run(["qemu-io", "-f", "raw", *cmds, "-c", "flush", server.uri()],
                             capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stdout + got.stderr
        with ControlClient(server.control, 30) as control:
            deadline = time.monotonic() + 60
            while True:   # until the lossy member has resynced and taken every mirror write
                status = control.status()
                lossy_dev = next(d for d in status["devices"] if d["url"] == lossy.url())
                member = status["luns"][0]["pools"][0]["members"][0]
                if member["state"] == "active" and lossy_dev["queue"]["queued_ops"] == 0:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.1)
    devices = {d["url"]: d for d in status["devices"]}
    assert set(devices) == {clean.url(), lossy.url()}, status["devices"]
    for d in devices.values():
        assert d["device"].startswith("pool lun0.pool member")
        for name in ("retransmits", "naks", "timeouts", "reconnects", "frames_sent"):
            assert isinstance(d["link"][name], int), (name, d)
    link = devices[lossy.url()]["link"]
    assert link["frames_sent"] >= 40 and link["retransmits"] > 0 and link["naks"] + link["timeouts"] > 0, link
    assert devices[clean.url()]["link"]["retransmits"] == 0
