"""kill -9 of the far controller mid-stream: afterwards the far LUN equals the primary, every far backup is exact.

The far side (RAM) comes back empty on another port behind the test's proxy. The primary's link
reconnects, finds its session gone (not RESUMED: the far side may hold any bytes), fails what was
unanswered and resyncs the far LUN from its dirty tracking; the next TRIGGER cuts the new far pool
at exactly the writes before it.
"""
from __future__ import annotations

import json
import signal
import time

import pytest

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient
from test_link_serve import (SIZE, Proxy, Writer, far_config, far_status, link_endpoint, matching_prefix, nbdcopy,
                             near_config)

pytestmark = pytest.mark.xdist_group("link")


def hostport(server):
    host, port = link_endpoint(server).removeprefix("link://").rsplit(":", 1)
    return host, int(port)


def test_far_side_killed_mid_stream_is_resynced_and_cut_exactly(tmp_path):
    far = ServerProcess(str(tmp_path / "far"), config=far_config(str(tmp_path))).start()
    px = Proxy(hostport(far))
    near = ServerProcess(str(tmp_path / "near"), config=near_config(
        str(tmp_path), f"link://127.0.0.1:{px.port}/lun0?rto=0.05&reconnect=20s")).start()
    far2 = None
    writer = Writer(near.socket, blocks=32)
    writer.start()
    try:
        control = ControlClient(near.control)
        for i in range(3):
            lo = writer.acked
            tid = int(control.ask(f"TRIGGER before{i}").split()[1])
            assert matching_prefix(writer, nbdcopy(far, f"lun0.t{tid}"), lo, writer.started) is not None
        far.stop(sig=signal.SIGKILL, timeout=10)   # mid-stream: the writer keeps writing
        time.sleep(0.5)
        far2 = ServerProcess(str(tmp_path / "far2"), config=far_config(str(tmp_path))).start()
        px.upstream = hostport(far2)
        px.cut()

        steady = []

        def resynced():
            st = control.status()
            ok = st["devices"][0]["link"]["up"] and st["luns"][0]["backup_lun"]["state"] == "in-sync"
            steady.append(ok)
            return steady[-3:] == [True] * 3
        deadline = time.monotonic() + 60
        while not resynced():
            assert time.monotonic() < deadline, json.dumps(control.status()["luns"][0]["backup_lun"])
            time.sleep(0.1)
        lo = writer.acked
        answer = control.ask("TRIGGER after")
        hi = writer.started
        assert answer.startswith("OK 4 "), answer
        got = nbdcopy(far2, "lun0.t1")   # the new far controller's first cut: the primary's fourth TRIGGER
        assert matching_prefix(writer, got, lo, hi) is not None
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    try:
        st = control.status()
        assert st["devices"][0]["link"]["reconnects"] >= 1
        # the far side restarted (another process, empty RAM): the resync was a full one
        assert st["luns"][0]["backup_lun"]["last_resync"]["since"] == 0
        assert far_status(far2)["device_links"]["luns"][0]["cuts"] == 1
        # nothing written since: the far LUN is the primary, byte for byte
        tid = int(control.ask("TRIGGER last").split()[1])
        assert nbdcopy(far2, "lun0.t2") == RawClient(near.socket).connect("lun0").read(0, SIZE) \
            == bytes(writer.image(len(writer.log))) and tid == 5
    finally:
        near.stop()
        if far2 is not None:
            far2.stop()
        px.close()


def test_far_side_restarted_while_idle_never_yields_a_false_backup(tmp_path):
    """The far controller dies and comes back empty while no write is in flight: the reconnect finds the
    session gone although nothing failed. The next TRIGGER must still cut the far side at exactly the
    primary (a resync first), never a backup of the empty far LUN."""
    far = ServerProcess(str(tmp_path / "far"), config=far_config(str(tmp_path))).start()
    px = Proxy(hostport(far))
    near = ServerProcess(str(tmp_path / "near"), config=near_config(
        str(tmp_path), f"link://127.0.0.1:{px.port}/lun0?rto=0.05&reconnect=20s")).start()
    far2 = None
    try:
        control = ControlClient(near.control)
        client = RawClient(near.socket).connect("lun0")
        pattern = bytes(range(256)) * 16
        for i in range(0, SIZE // 2, 1 << 16):
            client.write(i, pattern * 16)
        assert control.ask("TRIGGER before").startswith("OK 1 ")
        far.stop(sig=signal.SIGKILL, timeout=10)   # idle: nothing unanswered on the link
        far2 = ServerProcess(str(tmp_path / "far2"), config=far_config(str(tmp_path))).start()
        px.upstream = hostport(far2)
        px.cut()
        deadline = time.monotonic() + 30
        while control.status()["devices"][0]["link"]["reconnects"] < 1:
            assert time.monotonic() < deadline, json.dumps(control.status()["devices"][0])
            time.sleep(0.1)
        answer = control.ask("TRIGGER after")
        assert answer.startswith("OK 2 "), answer
        primary = client.read(0, SIZE)
        st = control.status()["luns"][0]["backup_lun"]
        cuts = far_status(far2)["device_links"]["luns"][0]["cuts"]
        if cuts:   # cut at the TRIGGER: then it is exactly the primary
            assert nbdcopy(far2, "lun0.t1") == primary
        else:      # or recorded as missed, never a false cut
            assert [m["id"] for m in st["missed_cuts"]] == [2], st
        assert st["last_resync"] is not None and st["last_resync"]["since"] == 0, st
        deadline = time.monotonic() + 30
        while control.status()["luns"][0]["backup_lun"]["state"] != "in-sync":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert control.ask("TRIGGER last").startswith("OK 3 ")
        assert nbdcopy(far2, f"lun0.t{cuts + 1}") == primary
        client.close()
    finally:
        near.stop()
        if far2 is not None:
            far2.stop()
        px.close()
