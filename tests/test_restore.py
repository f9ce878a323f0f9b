"""RESTORE: in sequence with the writes (those before it undone, those after it on top), incremental,
into its own LUN or a clone; checked against the reference model and with qemu-img compare."""
from __future__ import annotations

import random
import shutil
import subprocess
import sys

import pytest

from nbd_raw import RawClient
from reference import TRIM, WRITE, ZEROES, ReferenceLun
from splitpoint import config
from splitpoint.firmware import errors as E
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.control import exchange
from splitpoint.firmware.frontend.service import ServiceThread
from splitpoint.firmware.requests import Op

CHUNK = 64 << 10
SIZE = 4 << 20


def two_luns(mirror: str = "sync") -> str:
    return f"""
[controller]
chunk_size = "64K"
[[lun]]
name = "lun0"
url = "ram://lun0?size={SIZE}"
[lun.pool]
mirror = "{mirror}"
members = ["ram://b0?size={SIZE}", "ram://b1?size={SIZE}", "ram://b2?size={SIZE}", "ram://b3?size={SIZE}"]
[[lun]]
name = "lun1"
url = "ram://lun1?size={SIZE}"
"""


def random_requests(rng, ref: ReferenceLun, n: int):
    """``n`` random WRITE/TRIM/WRITE_ZEROES as (op, offset, length, data), applied to ``ref`` too."""
    out = []
    for _ in range(n):
        offset = rng.randrange(0, SIZE // 4096) * 4096
        length = min(rng.choice((4096, 12288, CHUNK, 2 * CHUNK + 4096)), SIZE - offset)
        kind = rng.choice((WRITE, WRITE, WRITE, TRIM, ZEROES))
        if kind == WRITE:
            data = rng.randbytes(length)
            ref.apply(WRITE, offset, data)
            out.append((Op.WRITE, offset, length, data))
        else:
            ref.apply(kind, offset, length)
            out.append((Op.TRIM if kind == TRIM else Op.WRITE_ZEROES, offset, length, None))
    return out


def submit_all(ctl, lun, requests, done):
    for op, offset, length, data in requests:
        ctl.submit(lun, op, offset, length, data, callback=done.append)


@pytest.mark.parametrize("mirror", ["sync", "async"])
@pytest.mark.parametrize("seed", [3, 4, 5])
def test_restore_in_sequence_against_the_reference(seed, mirror):
    rng = random.Random(seed)
    ctl = Controller.from_config(config.loads(two_luns(mirror)))
    ref = ReferenceLun(SIZE)
    try:
        done = []
        for _ in range(3):   # t1..t3, all kept by a pool of 4
            submit_all(ctl, "lun0", random_requests(rng, ref, 6), done)
            ctl.submit("lun0", Op.TRIGGER, callback=done.append)
            ref.apply("trigger")
        ctl.drain()
        ctl.settle()   # every cut complete: a backup still completing its cut cannot be restored from
        which = rng.choice((1, 2, 3))
        # writes before the RESTORE and after it, all queued before the controller polls once
        submit_all(ctl, "lun0", random_requests(rng, ref, 5), done)
        restored = []
        ctl.submit("lun0", Op.RESTORE, label=f"lun0.t{which}", callback=restored.append)
        ref.data[:] = ref.snapshot(which)
        submit_all(ctl, "lun0", random_requests(rng, ref, 5), done)
        ctl.submit("lun0", Op.TRIGGER, callback=done.append)   # t4: the restored LUN plus what came after
        ref.apply("trigger")
        ctl.drain()
        ctl.settle()
        assert all(c.error is None for c in done), [c.error for c in done if c.error]
        (c,) = restored
        assert c.error is None, c.error
        assert c.data.lun == "lun0" and c.data.backup == f"lun0.t{which}" and not c.data.full
        assert ctl.read("lun0", 0, SIZE) == bytes(ref.data)
        for tid in (2, 3, 4):   # a pool of 4 keeps three backups: t1's member became the active one
            assert ctl.read_backup("lun0", tid, 0, SIZE) == ref.snapshot(tid), tid
        assert ctl.counters["bytes_restored"] == c.data.copied
    finally:
        ctl.close()


def test_only_the_chunks_changed_since_the_cut_are_copied():
    ctl = Controller.from_config(config.loads(two_luns()))
    try:
        ctl.write("lun0", 0, b"\x01" * SIZE)
        ctl.trigger("lun0")
        for chunk in (2, 9, 40):
            ctl.write("lun0", chunk * CHUNK + 4096, b"\x02" * 4096)
        ctl.trim("lun0", 50 * CHUNK, CHUNK)
        result = ctl.restore("lun0", "lun0.t1")
        assert result.copied == 4 * CHUNK      # four chunks changed; a full copy would be 64
        assert ctl.read("lun0", 0, SIZE) == b"\x01" * SIZE
        # a second RESTORE right after copies the chunks the first one wrote (they changed since the cut)
        assert ctl.restore("lun0", "lun0.t1").copied == 4 * CHUNK
    finally:
        ctl.close()


def test_restore_into_another_lun_is_a_full_copy_and_a_writable_clone():
    ctl = Controller.from_config(config.loads(two_luns()))
    try:
        ctl.write("lun0", CHUNK, b"\x07" * 8192)
        ctl.trigger("lun0")
        ctl.write("lun0", CHUNK, b"\x08" * 8192)
        result = ctl.restore("lun1", "lun0.t1")
        assert result.full and result.copied == SIZE and result.lun == "lun1"
        assert ctl.read("lun1", 0, SIZE) == ctl.read_backup("lun0", 1, 0, SIZE)
        ctl.write("lun1", 0, b"\x09" * 4096)        # the clone is writable; the backup is untouched
        assert ctl.read_backup("lun0", 1, CHUNK, 8192) == b"\x07" * 8192
        assert ctl.read("lun0", CHUNK, 8192) == b"\x08" * 8192
    finally:
        ctl.close()


def test_restore_errors_change_nothing():
    ctl = Controller.from_config(config.loads(two_luns()))
    try:
        ctl.write("lun0", 0, b"\x05" * 4096)
        with pytest.raises(E.NoSuchBackupError):
            ctl.restore("lun0", "lun0.t1")
        with pytest.raises(E.BadRequestError, match="needs a backup name"):
            ctl._call("lun0", int(Op.RESTORE))  # no backup named
        assert ctl.read("lun0", 0, 4096) == b"\x05" * 4096
    finally:
        ctl.close()


@pytest.fixture
def served(tmp_path):
    link = str(tmp_path / "control")
    ctl = Controller.from_config(config.loads(two_luns()))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), control_link=link)
    service = thread.start()
    endpoint = service.endpoints[0]
    host, port = endpoint.removeprefix("nbd://").rsplit(":", 1)
    yield link, endpoint, (host, int(port))
    thread.stop()


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_control_channel_and_cli_restore_then_qemu_img_compare(served):
    link, endpoint, addr = served
    client = RawClient(addr).connect("lun0")
    client.write(0, b"\x11" * CHUNK)
    assert exchange(link, "TRIGGER before", 10).startswith("OK 1 ")
    client.write(CHUNK, b"\x22" * CHUNK)
    client.write(0, b"\x33" * 4096)

    def compare(a, b):
        return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", f"{endpoint}/{a}", f"{endpoint}/{b}"],
                              capture_output=True, text=True, timeout=60)
    assert compare("lun0", "lun0.t1").returncode == 1
    answer = exchange(link, "RESTORE lun0.t1", 30)
    assert answer.startswith("OK restore lun0 seq=")
    same = compare("lun0", "lun0.t1")
    assert same.returncode == 0 and "Images are identical." in same.stdout
    got = subprocess.run([sys.executable, "-m", "splitpoint", "restore", "--control", link, "--on", "lun1", "lun0.t1"],
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout.startswith("OK restore lun1 seq="), got.stderr
    assert compare("lun1", "lun0.t1").returncode == 0
    assert exchange(link, "RESTORE lun0.t9", 10).startswith("ERR restore failed: LUN lun0 has no consistent backup")
    assert exchange(link, "RESTORE lun0.t1 ON nolun", 10).startswith("ERR no LUN or group named 'nolun'")


def test_a_cut_still_completing_keeps_its_point_in_time_across_a_restore():
    ctl = Controller.from_config(config.loads(f"""
[controller]
chunk_size = "64K"
[resync]
rate = "64K"
[[lun]]
name = "lun0"
url = "ram://lun0?size={SIZE}"
[lun.pool]
members = ["ram://b0?size={SIZE}", "ram://b1?size={SIZE}", "ram://b2?size={SIZE}"]
"""))
    rng = random.Random(11)
    ref = ReferenceLun(SIZE)
    try:
        done = []
        submit_all(ctl, "lun0", random_requests(rng, ref, 8), done)
        ctl.submit("lun0", Op.TRIGGER, callback=done.append)    # t1: the first member was in sync, a backup at once
        ref.apply("trigger")
        submit_all(ctl, "lun0", random_requests(rng, ref, 8), done)
        ctl.submit("lun0", Op.TRIGGER, callback=done.append)    # t2: cut while its member still resyncs
        ref.apply("trigger")
        ctl.drain()
        pool = ctl.luns["lun0"].pools[0]
        assert [m.state for m in pool.members][:2] == ["frozen", "cutting"]
        restored = []
        submit_all(ctl, "lun0", random_requests(rng, ref, 4), done)
        ctl.submit("lun0", Op.RESTORE, label="lun0.t1", callback=restored.append)
        ref.data[:] = ref.snapshot(1)
        submit_all(ctl, "lun0", random_requests(rng, ref, 4), done)
        ctl.drain()
        assert restored[0].error is None, restored[0].error
        ctl.settle()
        assert all(c.error is None for c in done)
        assert ctl.read_backup("lun0", 2, 0, SIZE) == ref.snapshot(2)   # copy-on-write kept t2's cut
        assert ctl.read_backup("lun0", 1, 0, SIZE) == ref.snapshot(1)
        assert ctl.read("lun0", 0, SIZE) == bytes(ref.data)
    finally:
        ctl.close()
