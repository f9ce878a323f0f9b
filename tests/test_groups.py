"""Consistency groups from the configuration ([[group]]): one TRIGGER cuts every LUN of the group.

In process: the dependent-write oracle (a write on LUN b issued after a write on LUN a was
acknowledged is in b's backup only if a's write is in a's), with the acknowledgement hold and,
to show the hold is what makes it true, without it. As a real `splitpoint serve`: the control
channel's `TRIGGER ON <group>`, the `trigger.<group>` special LUN, the `<group>.t<id>.<lun>`
exports read by qemu-img, an unknown target, and a restart that keeps the group's cuts.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from splitpoint import config
from splitpoint.demo import ServerProcess
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import ControlClient
from splitpoint.firmware.requests import Op

MIB = 1 << 20


def two_luns(size="4M", metadata=None, pool=2, files=None):
    """LUNs a and b with pools, in group g; on RAM, or (``files``: a directory) on image files."""
    text = ""
    if metadata:
        text += f'[controller]\nmetadata_dir = "{metadata}"\n'

    def url(name):
        return f"file://{files}/{name}.img?size={size}&create=1" if files else f"ram://{name}?size={size}"
    for name in ("a", "b"):
        members = ", ".join(f'"{url(name + str(i))}"' for i in range(pool))
        text += f'[[lun]]\nname = "{name}"\nurl = "{url(name)}"\n[lun.pool]\nmembers = [{members}]\n'
    return text + '[[group]]\nname = "g"\nluns = ["a", "b"]\n'


@pytest.mark.parametrize("group, words", [
    ('name = "a"\nluns = ["a", "b"]', "also a LUN's"),
    ('name = "g"\nluns = ["a"]', "two or more"),
    ('name = "g"\nluns = ["a", "zz"]', "names no LUN 'zz'"),
    ('name = "g"\nluns = ["a", "a"]', "twice"),
    ('name = "g.x"\nluns = ["a", "b"]', "letters and digits"),
    ('name = "g"\nluns = ["a", "b"]\nprepare = 1', "unknown key 'prepare'"),
])
def test_a_bad_group_is_refused_with_its_reason(group, words):
    text = two_luns().rsplit("[[group]]", 1)[0] + "[[group]]\n" + group + "\n"
    with pytest.raises(config.ConfigError, match=words):
        config.loads(text)


# ---------------------------------------------------------------- the dependent-write oracle, in process

def _run_oracle(hold: bool, triggers: int = 100):
    """Writer pairs (A on LUN a, then, after A's ack, B on LUN b) against group TRIGGERs; returns the
    violations found: cuts whose b backup holds a B whose A is missing from the a backup."""
    ctl = Controller.from_config(config.loads(two_luns("1M", pool=3)))
    ctl.start()
    group = ctl.groups["g"]
    real_submit = ctl.submit

    def slow_submit(lun, op, *args, **kw):
        seq = real_submit(lun, op, *args, **kw)
        if op == Op.TRIGGER and kw.get("group") is not None and lun is group.luns[0]:
            time.sleep(0.002)      # widen the window between the first LUN's TRIGGER and the next
        return seq
    ctl.submit = slow_submit
    stop = threading.Event()
    violations, checked = [], [0]

    def writer():
        n = 0
        while not stop.is_set():
            n += 1
            block = (n % 256) * 4096
            stamp = n.to_bytes(8, "little") * 512
            ctl.write("a", block, stamp)          # A: acknowledged on return
            ctl.write("b", block, stamp)          # B: issued only after A's acknowledgement

    def cut():
        done = threading.Event()
        box = []

        def cb(result):
            box.append(result)
            done.set()
        if not hold:
            # the hold switched off: the token counts as committed before any LUN dequeues its TRIGGER
            import splitpoint.firmware.group as gmod
            orig = gmod.GroupToken.__init__

            def committed(self, label=None):
                orig(self, label)
                self.committed = True
            gmod.GroupToken.__init__ = committed
            try:
                group.trigger(ctl, "oracle", cb)
            finally:
                gmod.GroupToken.__init__ = orig
        else:
            group.trigger(ctl, "oracle", cb)
        assert done.wait(30)
        return box[0]

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(triggers):
            result = cut()
            assert not isinstance(result, Exception), result
            ra, rb = result.results
            a = ctl.read_backup("a", ra.id, 0, MIB)
            b = ctl.read_backup("b", rb.id, 0, MIB)
            for block in range(256):
                sa = int.from_bytes(a[block * 4096:block * 4096 + 8], "little")
                sb = int.from_bytes(b[block * 4096:block * 4096 + 8], "little")
                checked[0] += 1
                if sb > sa:          # B of write n reached b's backup, A of write n did not reach a's
                    violations.append((result.id, block, sa, sb))
            time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
        ctl.stop()
        ctl.close()
    return violations, checked[0]


def test_group_trigger_holds_dependent_writes_together():
    violations, checked = _run_oracle(hold=True, triggers=100)
    assert checked == 100 * 256
    assert violations == []


def test_without_the_hold_the_oracle_finds_a_dependent_write_out_of_its_cut():
    """The same oracle with the hold switched off: it must find a violation (else the test above proves nothing)."""
    violations, _ = _run_oracle(hold=False, triggers=100)
    assert violations, "no dependent write escaped its cut without the hold: the oracle cannot tell"


# ---------------------------------------------------------------- a real server

needs_clients = pytest.mark.skipif(any(shutil.which(t) is None for t in ("qemu-io", "qemu-img", "nbdinfo")),
                                   reason="qemu-io, qemu-img and nbdinfo are needed (make test installs them)")


def nbd(server, export):
    return f"nbd+unix:///{export}?socket={server.socket}"


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@needs_clients
def test_trigger_on_a_group_cuts_every_lun_and_exports_them(tmp_path):
    cfg = tmp_path / "groups.toml"
    cfg.write_text(two_luns(metadata=str(tmp_path / "meta"), files=str(tmp_path), pool=3))
    with ServerProcess(str(tmp_path / "run"), config=str(cfg)) as server:
        for lun, pattern in (("a", "0x11"), ("b", "0x22")):
            assert run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern} 0 64k", nbd(server, lun)]).returncode == 0
        with ControlClient(server.control, 30) as control:
            answer = control.ask("TRIGGER ON g first")
            assert answer.startswith("OK 1 group=g seq=a:"), answer
            seqs = dict(part.split(":") for part in answer.split("seq=", 1)[1].split(","))
            assert set(seqs) == {"a", "b"} and int(seqs["b"]) > int(seqs["a"])
            assert control.ask("TRIGGER ON nosuch").startswith("ERR no LUN or group named 'nosuch'")
            status = control.status()
            assert [g["name"] for g in status["groups"]] == ["g"]
            assert status["groups"][0]["triggers"] == 1 and status["groups"][0]["last"]["id"] == 1
            assert sum(len(lun["backups"]) for lun in status["luns"]) == 2      # the unknown target cut nothing
        # later writes do not reach the cut
        assert run(["qemu-io", "-f", "raw", "-c", "write -P 0x33 0 64k", nbd(server, "a")]).returncode == 0
        listing = run(["nbdinfo", "--list", "--json", nbd(server, "")]).stdout
        assert '"g.t1.a"' in listing and '"g.t1.b"' in listing and '"trigger.g"' in listing
        for lun, pattern in (("a", "0x11"), ("b", "0x22")):
            got = run(["qemu-io", "-f", "raw", "-r", "-c", f"read -P {pattern} 0 64k", nbd(server, f"g.t1.{lun}")])
            assert got.returncode == 0 and "verification failed" not in got.stdout, got.stdout + got.stderr
            same = run(["qemu-img", "compare", "-f", "raw", "-F", "raw", nbd(server, f"g.t1.{lun}"),
                        nbd(server, f"{lun}.t1")])
            assert same.returncode == 0, same.stdout + same.stderr
        # the special LUN of the group: a write at offset 0 is the group's TRIGGER
        label = tmp_path / "label"
        label.write_bytes(b"second\0")
        got = run(["qemu-io", "-f", "raw", "-c", f"write -s {label} 0 7", nbd(server, "trigger.g")])
        assert got.returncode == 0, got.stderr
        with ControlClient(server.control, 30) as control:
            assert control.status()["groups"][0]["triggers"] == 2
        assert run(["qemu-img", "compare", "-f", "raw", "-F", "raw", nbd(server, "g.t2.a"),
                    nbd(server, "a")]).returncode == 0
    # a restart keeps the group's cuts and its numbering
    with ServerProcess(str(tmp_path / "run2"), config=str(cfg)) as server:
        listing = run(["nbdinfo", "--list", "--json", nbd(server, "")]).stdout
        assert '"g.t1.a"' in listing and '"g.t2.b"' in listing
        with ControlClient(server.control, 30) as control:
            assert control.ask("TRIGGER ON g").startswith("OK 3 group=g ")
