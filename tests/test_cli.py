"""The `splitpoint` command line, driven as a user would: real processes, real signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess

MiB = 1 << 20


def run(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "splitpoint", *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))


def unix_address(server):
    return server.socket


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerProcess(str(tmp_path_factory.mktemp("serve")), tcp="127.0.0.1:0") as s:
        yield s
    assert s.returncode == 0, s.log()


def test_help_of_every_command():
    top = run("--help")
    assert top.returncode == 0
    for name in ("serve", "trigger", "status", "verify", "demo"):
        assert name in top.stdout
        sub = run(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert "Usage:" in sub.stdout
    serve = run("serve", "--help").stdout
    for option in ("--config", "--listen", "--socket", "--control-link", "--control"):
        assert option in serve
    assert "--json" in run("status", "--help").stdout


def test_banner_names_endpoints_exports_and_control(server):
    out = "\n".join(server.output)
    assert f"NBD: nbd+unix:///?socket={server.socket}" in out
    assert any(e.startswith("nbd://127.0.0.1:") for e in server.endpoints)
    assert f"(linked at {server.control})" in out
    assert os.readlink(server.control).startswith("/dev/pts/")
    assert "exports: lun0, lun0.trigger, trigger" in out


def test_trigger_status_verify(server):
    RawClient(server.socket).connect("lun0").write(0, b"\x42" * 4096)
    got = run("trigger", "--control", server.control, "cli-label")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("OK ") and " seq=" in got.stdout
    tid = int(got.stdout.split()[1])
    table = run("status", "--control", server.control)
    assert table.returncode == 0, table.stderr
    assert f"lun0.t{tid}" in table.stdout and "cli-label" in table.stdout and "lun0.pool" in table.stdout
    doc = json.loads(run("status", "--json", env={"SPLITPOINT_CONTROL": server.control}).stdout)
    assert any(b["label"] == "cli-label" for b in doc["luns"][0]["backups"])
    verify = run("verify", "--control", server.control)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert f"lun0.t{tid} " in verify.stdout and "OK" in verify.stdout and "MISMATCH" not in verify.stdout
    one = run("verify", "--control", server.control, "--json", str(tid))
    assert [r["trigger_id"] for r in json.loads(one.stdout)] == [tid]
    assert RawClient(server.socket).connect(f"lun0.t{tid}").read(0, 4096) == b"\x42" * 4096


def test_status_watch_without_resync(server):
    got = run("status", "--control", server.control, "--watch")
    assert got.returncode == 0 and "resync" in got.stdout


def test_trigger_errors(server, tmp_path):
    too_long = run("trigger", "--control", server.control, "x" * 65)
    assert too_long.returncode == 2 and "at most 64" in too_long.stderr
    missing = run("trigger", "--control", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "cannot open control channel" in missing.stderr
    no_url = run("trigger", env={"SPLITPOINT_CONTROL": ""})
    assert no_url.returncode == 2 and "--control" in no_url.stderr
    nothing = run("verify", "--control", server.control, "999")
    assert nothing.returncode == 1 and "no such backup" in nothing.stderr


def test_serve_rejects_bad_configuration_and_options(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[lun]]\nname = "lun0"\nurl = "ram://?size=1M"\ncolour = "blue"\n')
    got = run("serve", "--config", str(bad), "--socket", str(tmp_path / "s"))
    assert got.returncode == 1
    assert "colour" in got.stderr and "valid keys" in got.stderr
    missing = run("serve", "--config", str(tmp_path / "none.toml"))
    assert missing.returncode == 1 and "none.toml" in missing.stderr
    listen = run("serve", "--listen", "localhost:http")
    assert listen.returncode == 2 and "HOST:PORT" in listen.stderr
    notsock = tmp_path / "plain"
    notsock.write_text("")
    got = run("serve", "--socket", str(notsock))
    assert got.returncode == 1 and "not a socket" in got.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_and_exits_0(tmp_path, sig):
    server = ServerProcess(str(tmp_path)).start()
    c = RawClient(server.socket).connect("lun0")
    for i in range(16):
        c.request("WRITE", i * 4096, payload=b"\x01" * 4096)
    assert server.stop(sig) == 0, server.log()
    assert "stopped" in server.output
    assert not os.path.exists(server.socket) and not os.path.lexists(server.control)


def test_metadata_persists_across_a_clean_restart(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cfg = tmp_path / "file.toml"
    cfg.write_text(f"""
[controller]
metadata_dir = "{tmp_path / 'meta'}"
[[lun]]
name = "lun0"
url = "file://{images}/lun0.img?size=4M&create=1"
[lun.pool]
members = ["file://{images}/b0.img?size=4M&create=1", "file://{images}/b1.img?size=4M&create=1"]
""")
    first = ServerProcess(str(tmp_path / "run1"), config=str(cfg)).start()
    c = RawClient(first.socket).connect("lun0")
    c.write(0, b"\x61" * 8192)
    trig = RawClient(first.socket).connect("trigger")
    trig.write(0, b"before-restart".ljust(512, b"\0"))
    c.write(0, b"\x62" * 8192)
    assert first.stop() == 0, first.log()

    second = ServerProcess(str(tmp_path / "run2"), config=str(cfg)).start()
    try:
        assert RawClient(second.socket).connect("lun0").read(0, 8192) == b"\x62" * 8192
        assert RawClient(second.socket).connect("lun0.t1").read(0, 8192) == b"\x61" * 8192
        status = json.loads(run("status", "--json", "--control", second.control).stdout)
        assert status["metadata"]["recovered"] == "clean"
        assert status["luns"][0]["backups"][0]["label"] == "before-restart"
    finally:
        assert second.stop() == 0


def _run_on_a_terminal(*args, timeout=60) -> str:
    """Run `splitpoint ARGS` with stdout on a pty (as a user's terminal) and return what it drew."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "splitpoint", *args], stdout=slave, stderr=slave,
                            env=dict(os.environ, COLUMNS="100", TERM="xterm"))
    os.close(slave)
    out = bytearray()
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:   # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=timeout)
    os.close(master)
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_verify_draws_a_progress_bar_on_a_terminal(server):
    assert run("trigger", "--control", server.control, "bar").returncode == 0
    drawn = _run_on_a_terminal("verify", "--control", server.control)
    assert "\x1b[" in drawn and "━" in drawn          # rich's bar, with terminal control sequences
    assert "OK" in drawn


def test_status_watch_follows_a_throttled_resync(tmp_path):
    cfg = tmp_path / "slow.toml"
    cfg.write_text('[resync]\nrate = "8M"\n\n[[lun]]\nname = "lun0"\nurl = "ram://lun0?size=16M"\n'
                   '[lun.pool]\nmembers = ["ram://b0?size=16M", "ram://b1?size=16M"]\n')
    with ServerProcess(str(tmp_path / "srv"), config=str(cfg)) as server:
        c = RawClient(server.socket).connect("lun0")
        for i in range(16):
            c.write(i * MiB, b"\x5a" * MiB)
        assert run("trigger", "--control", server.control).returncode == 0
        watched = run("status", "--control", server.control, "--watch", "--interval", "0.2")
        assert watched.returncode == 0, watched.stderr
        lines = watched.stdout.splitlines()
        progress = [line for line in lines if line.startswith("resync lun0.pool[")]
        assert progress, watched.stdout
        assert "%" in progress[0] and "/s" in progress[0]
        assert lines[-1] == "all resyncs done"
