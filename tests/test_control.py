"""The serial control channel: its line protocol over a real pty and over a pyserial URL."""
from __future__ import annotations

import json
import os
import socket
import time

import pytest
import serial

from nbd_raw import RawClient
from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import ControlClient, ControlError, exchange
from splitpoint.firmware.frontend.service import ServiceThread

MiB = 1 << 20
CONFIG = """
[[lun]]
name = "lun0"
url = "ram://lun0?size=8M"
[lun.pool]
members = ["ram://b0?size=8M", "ram://b1?size=8M", "ram://b2?size=8M"]
"""


@pytest.fixture
def served(tmp_path):
    """(control link path, NBD address) of an in-process server with a pty control channel."""
    link = str(tmp_path / "control")
    ctl = Controller.from_config(config.loads(CONFIG))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), control_link=link)
    service = thread.start()
    host, port = service.endpoints[0].removeprefix("nbd://").rsplit(":", 1)
    yield link, (host, int(port)), service
    thread.stop()
    assert ctl.counters["callback_errors"] == 0
    assert not os.path.lexists(link), "the control link outlives the server"


def test_pty_is_linked_and_answers_ping(served):
    link, _addr, service = served
    assert os.path.islink(link) and os.readlink(link) == service.control.path
    assert service.control.path.startswith("/dev/pts/")
    assert exchange(link, "PING", 5) == "PONG"
    assert exchange(link, "ping", 5) == "PONG"


def test_status_is_one_line_of_json(served):
    link, _addr, _service = served
    answer = exchange(link, "STATUS", 5)
    assert "\n" not in answer
    status = json.loads(answer)
    assert status["luns"][0]["name"] == "lun0"
    assert status["luns"][0]["size"] == 8 * MiB


def test_trigger_answers_after_the_split_with_id_and_seq(served):
    link, addr, _service = served
    data = RawClient(addr).connect("lun0")
    data.write(0, b"\x11" * 4096)
    with ControlClient(link, 5) as control:
        first = control.ask("TRIGGER before-change")
        data.write(0, b"\x22" * 4096)
        second = control.ask("TRIGGER")
    assert first.startswith("OK 1 seq=") and second.startswith("OK 2 seq=")
    seq1, seq2 = int(first.split("seq=")[1]), int(second.split("seq=")[1])
    assert seq2 == seq1 + 2        # one write was sequenced between the two TRIGGERs
    # the answer came after the split: the backup is exported at once and holds the cut
    assert RawClient(addr).connect("lun0.t1").read(0, 4096) == b"\x11" * 4096
    assert RawClient(addr).connect("lun0.t2").read(0, 4096) == b"\x22" * 4096
    status = json.loads(exchange(link, "STATUS", 5))
    labels = {b["trigger_id"]: b["label"] for b in status["luns"][0]["backups"]}
    assert labels == {1: "before-change", 2: ""}


def test_errors_are_one_line_and_the_channel_goes_on(served):
    link, _addr, _service = served
    with ControlClient(link, 5) as control:
        assert control.ask("FROBNICATE now").startswith("ERR unknown command")
        assert control.ask("TRIGGER " + "x" * 65).startswith("ERR label is 65 bytes")
        assert control.ask("PING extra").startswith("ERR")
        assert control.ask("VERIFY 99").startswith("ERR")
        assert control.ask("VERIFY nolun").startswith("ERR no LUN")
        assert control.ask("PING") == "PONG"


def test_line_ends_blank_lines_long_lines_and_bad_utf8(served):
    link, _addr, _service = served
    port = serial.serial_for_url(link, timeout=5)
    port.reset_input_buffer()
    port.write(b"\r\n\n  \nPING\r\n")
    assert port.read_until(b"\n") == b"PONG\n"
    port.write(b"Q" * 3000 + b"\nPING\n")
    assert port.read_until(b"\n").startswith(b"ERR line longer than")
    assert port.read_until(b"\n") == b"PONG\n"
    port.write(b"TRIGGER \xff\xfe\n")
    assert port.read_until(b"\n") == b"ERR line is not UTF-8\n"
    port.close()


def test_verify_checks_every_backup(served):
    link, addr, _service = served
    RawClient(addr).connect("lun0").write(MiB, b"\x5a" * 65536)
    assert exchange(link, "TRIGGER a", 5).startswith("OK 1")
    assert exchange(link, "TRIGGER b", 5).startswith("OK 2")
    results = json.loads(exchange(link, "VERIFY", 30))
    assert sorted(r["trigger_id"] for r in results) == [1, 2]
    assert all(r["ok"] and r["expected"] == r["actual"] for r in results)
    (only,) = json.loads(exchange(link, "VERIFY lun0 2", 30))
    assert only["trigger_id"] == 2 and only["ok"]


def test_client_errors_name_the_problem(tmp_path):
    with pytest.raises(ControlError, match="cannot open control channel"):
        exchange(str(tmp_path / "missing"), "PING", 1)
    a, b = os.openpty()   # a pty nobody answers on
    try:
        with pytest.raises(ControlError, match="no answer"):
            exchange(os.ttyname(b), "PING", 0.3)
    finally:
        os.close(a)
        os.close(b)


def test_control_over_a_pyserial_url():
    """--control URL: the server opens any pyserial URL (here socket://, to a listener the test owns)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    url = f"socket://127.0.0.1:{listener.getsockname()[1]}"
    ctl = Controller.from_config(config.loads(CONFIG))
    with ServiceThread(ctl, listen=("127.0.0.1", 0), control_url=url) as service:
        assert service.control.path == url
        line, _ = listener.accept()
        line.settimeout(5)
        line.sendall(b"PING\nTRIGGER over-tcp\n")
        got = b""
        while got.count(b"\n") < 2:
            got += line.recv(100)
        assert got.split(b"\n")[:2] == [b"PONG", b"OK 1 seq=1"]
        line.close()
        time.sleep(0.1)
    listener.close()
