"""Trigger-source rules, end to end: every path a host can use follows firmware/triggers.py.

The special-LUN label (its bytes up to the first NUL, at most 64) through the Python API
source and through the real ``trigger`` / ``trigger.<lun>`` exports of ``splitpoint serve``
(a raw NBD client and qemu-io); the control-line grammar through the real control ptys of
``splitpoint serve`` and ``splitpoint emulate``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import serial

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import ControlClient
from splitpoint.firmware.triggers import SpecialLunTrigger

pytestmark = pytest.mark.xdist_group("trigger-rules")

TWO_LUNS = """
[[lun]]
name = "lun0"
url = "ram://lun0?size=4M"
[lun.pool]
members = ["ram://a0?size=4M", "ram://a1?size=4M"]

[[lun]]
name = "lun1"
url = "ram://lun1?size=4M"
[lun.pool]
members = ["ram://b0?size=4M", "ram://b1?size=4M"]
"""

#: a label with an embedded NUL and bytes after it, padded as a client pads a block
NUL_LABEL = b"nightly\0after-the-nul" + b"\0" * 491


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("trigger-rules")
    config = work / "two-luns.toml"
    config.write_text(TWO_LUNS)
    with ServerProcess(str(work), config=str(config)) as s:
        yield s
    assert s.returncode == 0, s.log()


def labels(server, lun: str) -> dict[int, str]:
    with ControlClient(server.control, 60) as control:
        status = json.loads(control.ask("STATUS"))
    (doc,) = [d for d in status["luns"] if d["name"] == lun]
    return {b["trigger_id"]: b["label"] for b in doc["backups"]}


def newest(server, lun: str) -> tuple[int, str]:
    cut = labels(server, lun)
    tid = max(cut)
    return tid, cut[tid]


# ---------------------------------------------------------------- the special-LUN label

def test_api_special_lun_label_stops_at_the_first_nul():
    ctl = Controller.from_config(None)
    try:
        got = []
        SpecialLunTrigger(ctl, "lun0").write(0, NUL_LABEL, callback=got.append)
        SpecialLunTrigger(ctl, "lun0").write(0, b"z" * 100, callback=got.append)
        ctl.drain()
        assert [c.trigger.label for c in got] == ["nightly", "z" * 64]
    finally:
        ctl.close()


@pytest.mark.parametrize("export, lun", [("trigger", "lun0"), ("trigger.lun1", "lun1")])
def test_special_lun_export_label_stops_at_the_first_nul(server, export, lun):
    client = RawClient(server.socket, timeout=60).connect(export)
    client.write(0, NUL_LABEL)
    client.close()
    assert newest(server, lun)[1] == "nightly"


def test_special_lun_label_written_with_qemu_io(server, tmp_path):
    if shutil.which("qemu-io") is None:
        pytest.skip("qemu-io not installed (make test installs it)")
    source = tmp_path / "label.bin"
    source.write_bytes(NUL_LABEL)
    before = max(labels(server, "lun0"), default=0)
    got = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -s {source} 0 512",
                          f"nbd+unix:///trigger?socket={server.socket}"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    tid, label = newest(server, "lun0")
    assert tid > before and label == "nightly"


# ---------------------------------------------------------------- the control line of `serve`

def ask(server, line: str) -> str:
    with ControlClient(server.control, 60) as control:
        return control.ask(line)


def test_serve_trigger_on_a_named_lun(server):
    before = max(labels(server, "lun0"), default=0)
    answer = ask(server, "TRIGGER ON lun1 after upgrade")
    assert answer.startswith("OK "), answer
    tid = int(answer.split()[1])
    assert labels(server, "lun1")[tid] == "after upgrade"
    assert max(labels(server, "lun0"), default=0) == before     # lun0 was not cut
    # "on" in lower case starts a label, so labels written before ON existed keep their meaning
    answer = ask(server, "TRIGGER on call")
    assert answer.startswith("OK ")
    assert newest(server, "lun0")[1] == "on call"


@pytest.mark.parametrize("line, reply", [
    ("PING", "PONG"),
    ("ping", "PONG"),
    ("TRIGGER ON", "ERR TRIGGER ON needs a LUN or group name"),
    ("TRIGGER ON nolun x", "ERR no LUN or group named 'nolun'"),
    ("TRIGGER " + "x" * 65, "ERR label is 65 bytes; at most 64"),
    ("STATUS now", "ERR STATUS takes no argument"),
    ("VERIFY lun1 x", "ERR usage: VERIFY [name] [trigger id]"),
    ("VERIFY nolun", "ERR no LUN or group named 'nolun'"),
    ("PIN lun0.t999", "ERR LUN lun0 has no consistent backup cut by TRIGGER 999"),
    ("UNPIN nolun.t1", "ERR 'nolun.t1' names no backup"),
    ("RESTORE lun0.t999 ON lun0", "ERR restore failed: LUN lun0 has no consistent backup cut by TRIGGER 999"),
    ("PIN", "ERR PIN needs a backup name"),
    ("RESTORE lun0.t1 lun0", "ERR usage: RESTORE <backup> [ON <lun>]"),
    ("FROBNICATE", "ERR unknown command 'FROBNICATE'; commands: TRIGGER [ON <lun|group>] [label]"),
])
def test_serve_control_grammar(server, line, reply):
    assert ask(server, line).startswith(reply)


def test_serve_verify_names_a_lun(server):
    assert ask(server, "TRIGGER ON lun1 v").startswith("OK ")
    results = json.loads(ask(server, "VERIFY lun1"))
    assert results and all(r["ok"] for r in results)


def splitpoint_cli(*args):
    return subprocess.run([sys.executable, "-m", "splitpoint", *args], capture_output=True, text=True, timeout=60)


def test_cli_trigger_on_a_named_lun(server):
    got = splitpoint_cli("trigger", "--control", server.control, "--on", "lun1", "from-cli")
    assert got.returncode == 0, got.stderr
    assert labels(server, "lun1")[int(got.stdout.split()[1])] == "from-cli"
    # without --on, a label that reads as "ON <name>" would cut another LUN: refused, nothing sent
    before = labels(server, "lun1")
    bad = splitpoint_cli("trigger", "--control", server.control, "ON lun1")
    assert bad.returncode != 0 and "cannot start with the word ON" in bad.stderr
    assert labels(server, "lun1") == before


# ---------------------------------------------------------------- the control line of `emulate`

@pytest.fixture
def emulated(tmp_path):
    """The control pty of a real `splitpoint emulate` process, opened with pyserial."""
    link, ctl = tmp_path / "link", tmp_path / "ctl"
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", "emulate", "emu-uart-3m", "--link", str(link),
                             "--control-link", str(ctl), "--rate", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30   # only ends a hung start
        while not ctl.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        port = serial.serial_for_url(str(ctl), timeout=60)
        yield port
        port.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


@pytest.mark.parametrize("line, reply", [
    (b"PING", b"PONG"),
    (b"TRIGGER " + b"x" * 65, b"ERR label is 65 bytes; at most 64"),
    (b"TRIGGER ON lun1 x", b"ERR TRIGGER ON is not supported by board emu-uart-3m"),
    (b"VERIFY", b"ERR VERIFY is not supported by board emu-uart-3m"),
    (b"PIN b.t1", b"ERR PIN is not supported by board emu-uart-3m"),
    (b"RESTORE b.t1 ON lun0", b"ERR RESTORE is not supported by board emu-uart-3m"),
    (b"STATUS x", b"ERR STATUS takes no argument"),
    (b"FROBNICATE", b"ERR unknown command 'FROBNICATE'; commands: TRIGGER [ON <lun|group>] [label]"),
])
def test_emulate_control_grammar(emulated, line, reply):
    emulated.write(line + b"\n")
    assert emulated.readline().startswith(reply)


def test_emulate_skips_blank_lines_like_serve(emulated):
    emulated.write(b"\r\n\n  \nPING\r\n")
    assert emulated.readline() == b"PONG\n"
    emulated.write(b"TRIGGER on the hour\n")
    assert emulated.readline().startswith(b"OK 1 seq=")
