"""Changed-block maps: qemu:dirty-bitmap:<backup> over NBD (read with nbdinfo) and `splitpoint diff`
against a reference model of which chunks a random stream touched after each TRIGGER."""
from __future__ import annotations

import json
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

CHUNK = 64 << 10
SIZE = 4 << 20
NCHUNKS = SIZE // CHUNK
CONFIG = f"""
[controller]
chunk_size = "64K"
[[lun]]
name = "lun0"
url = "ram://lun0?size={SIZE}"
[lun.pool]
members = ["ram://b0?size={SIZE}", "ram://b1?size={SIZE}", "ram://b2?size={SIZE}", "ram://b3?size={SIZE}"]
"""

needs_nbdinfo = pytest.mark.skipif(shutil.which("nbdinfo") is None, reason="nbdinfo (libnbd-bin) is not installed")


class TouchModel:
    """Which chunks each request touched, per TRIGGER: shares nothing with the epoch map."""

    def __init__(self):
        self.ref = ReferenceLun(SIZE)
        self.touched_after: dict[int, set[int]] = {}   # trigger id -> chunks touched after its cut
        self.between: dict[tuple[int, int], set[int]] = {}

    def touch(self, offset: int, length: int) -> None:
        chunks = set(range(offset // CHUNK, (offset + length - 1) // CHUNK + 1))
        for tid in self.touched_after:
            self.touched_after[tid] |= chunks

    def trigger(self, tid: int) -> None:
        self.ref.apply("trigger")
        self.touched_after[tid] = set()

    def touched_between(self, older: int, newer: int) -> set[int]:
        return self.touched_after[older] - self.touched_after[newer] if newer in self.touched_after else set()


def changed_chunks(extents) -> set[int]:
    out = set()
    for offset, length, dirty in extents:
        if dirty:
            assert offset % CHUNK == 0 and length % CHUNK == 0 or offset + length == SIZE
            out |= set(range(offset // CHUNK, -(-(offset + length) // CHUNK)))
    return out


def nbdinfo_map(uri: str, context: str) -> list[tuple[int, int, bool]]:
    got = subprocess.run(["nbdinfo", f"--map={context}", uri], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    out = []
    for line in got.stdout.splitlines():
        offset, length, flags, *_ = line.split()
        out.append((int(offset), int(length), bool(int(flags) & 1)))
    return out


def diff_cli(*args):
    return subprocess.run([sys.executable, "-m", "splitpoint", "diff", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def served(tmp_path):
    link = str(tmp_path / "control")
    ctl = Controller.from_config(config.loads(CONFIG))
    thread = ServiceThread(ctl, listen=("127.0.0.1", 0), control_link=link)
    service = thread.start()
    endpoint = service.endpoints[0]
    host, port = endpoint.removeprefix("nbd://").rsplit(":", 1)
    yield ctl, link, endpoint, (host, int(port))
    thread.stop()


def run_stream(rng, client, link, model: TouchModel, triggers: int) -> None:
    tid = max(model.touched_after, default=0)
    for _ in range(triggers):
        for _ in range(rng.randrange(1, 6)):
            offset = rng.randrange(0, SIZE // 4096) * 4096
            length = min(rng.choice((4096, 8192, CHUNK, 3 * CHUNK)), SIZE - offset)
            kind = rng.choice((WRITE, WRITE, WRITE, TRIM, ZEROES))
            if kind == WRITE:
                data = rng.randbytes(length)
                client.write(offset, data)
                model.ref.apply(WRITE, offset, data)
            elif kind == TRIM:
                assert client.do("TRIM", offset, length).error == 0
                model.ref.apply(TRIM, offset, length)
            else:
                assert client.do("WRITE_ZEROES", offset, length).error == 0
                model.ref.apply(ZEROES, offset, length)
            model.touch(offset, length)
        answer = exchange(link, "TRIGGER", 10)
        tid += 1
        assert answer.startswith(f"OK {tid} ")
        model.trigger(tid)


@needs_nbdinfo
@pytest.mark.parametrize("seed", [1, 2])
def test_dirty_bitmaps_equal_the_reference_changed_chunks(served, seed):
    ctl, link, endpoint, addr = served
    rng = random.Random(seed)
    model = TouchModel()
    client = RawClient(addr).connect("lun0")
    run_stream(rng, client, link, model, triggers=5)
    for _ in range(4):   # writes after the newest cut: on the live LUN only
        offset = rng.randrange(0, NCHUNKS) * CHUNK
        client.write(offset, b"\x99" * 4096)
        model.ref.apply(WRITE, offset, b"\x99" * 4096)
        model.touch(offset, 4096)
    kept = sorted(b.trigger_id for b in ctl.backups("lun0"))
    assert kept == [3, 4, 5]   # a pool of 4: three frozen backups
    for since in kept:
        # the live LUN: exactly the chunks touched after the cut
        live = nbdinfo_map(f"{endpoint}/lun0", f"qemu:dirty-bitmap:lun0.t{since}")
        assert changed_chunks(live) == model.touched_after[since]
        assert sum(n for _o, n, _d in live) == SIZE
        for newer in kept:
            if newer <= since:
                continue
            between = nbdinfo_map(f"{endpoint}/lun0.t{newer}", f"qemu:dirty-bitmap:lun0.t{since}")
            got = changed_chunks(between)
            # never misses a chunk touched between the cuts, never reports one untouched since the older
            assert model.touched_between(since, newer) <= got <= model.touched_after[since]
            old, new = model.ref.snapshot(since), model.ref.snapshot(newer)
            differ = {c for c in range(NCHUNKS) if old[c * CHUNK:(c + 1) * CHUNK] != new[c * CHUNK:(c + 1) * CHUNK]}
            assert differ <= got
        # splitpoint diff prints what nbdinfo prints
        cli = diff_cli("--nbd", endpoint, f"lun0.t{since}")
        assert cli.returncode == 0, cli.stderr
        printed = [(int(o), int(n), d == "dirty") for o, n, _f, d in (line.split() for line in cli.stdout.splitlines())]
        assert printed == live


@needs_nbdinfo
def test_listed_contexts_and_bad_names(served):
    ctl, link, endpoint, addr = served
    RawClient(addr).connect("lun0").write(0, b"\x01" * 4096)
    for _ in range(2):
        assert exchange(link, "TRIGGER", 10).startswith("OK ")
    info = subprocess.run(["nbdinfo", "--json", f"{endpoint}/lun0"], capture_output=True, text=True, timeout=60)
    contexts = json.loads(info.stdout)["exports"][0]["contexts"]
    assert contexts == ["base:allocation", "qemu:dirty-bitmap:lun0.t1", "qemu:dirty-bitmap:lun0.t2",
                        "qemu:dirty-bitmap:lun0.latest"]
    RawClient(addr).connect("lun0").write(5 * CHUNK, b"\x04" * 4096)
    assert nbdinfo_map(f"{endpoint}/lun0", "qemu:dirty-bitmap:lun0.latest") == \
        nbdinfo_map(f"{endpoint}/lun0", "qemu:dirty-bitmap:lun0.t2") == \
        [(0, 5 * CHUNK, False), (5 * CHUNK, CHUNK, True), (6 * CHUNK, SIZE - 6 * CHUNK, False)]
    missing = subprocess.run(["nbdinfo", "--map=qemu:dirty-bitmap:lun0.t9", f"{endpoint}/lun0"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    cli = diff_cli("--nbd", endpoint, "--json", "lun0.t9")
    assert cli.returncode != 0 and "no meta context 'qemu:dirty-bitmap:lun0.t9'" in cli.stderr
    cli = diff_cli("--nbd", endpoint, "--json", "lun0.t1", "lun0.t2")
    assert cli.returncode == 0, cli.stderr
    # nothing changed between t1 and t2, but the chunk written after t2 counts: the map errs on "changed"
    assert json.loads(cli.stdout)["changed"] == [[5 * CHUNK, CHUNK]]


def test_changed_since_in_process_and_across_luns():
    ctl = Controller.from_config(config.loads(CONFIG))
    try:
        ctl.write("lun0", CHUNK, b"\x02" * 4096)
        ctl.trigger("lun0")
        ctl.write("lun0", 3 * CHUNK + 4096, b"\x03" * 4096)
        assert ctl.changed_since("lun0.t1") == [(0, 3 * CHUNK, False), (3 * CHUNK, CHUNK, True),
                                                 (4 * CHUNK, SIZE - 4 * CHUNK, False)]
        assert ctl.changed_since("lun0.t1", "lun0", 3 * CHUNK + 512, 1024) == [(3 * CHUNK + 512, 1024, True)]
        with pytest.raises(E.NoSuchBackupError):
            ctl.changed_since("lun0.t2")
        with pytest.raises(E.NoSuchBackupError, match="names no backup"):
            ctl.changed_since("lun0")
    finally:
        ctl.close()


def _file_controller(d) -> Controller:
    members = ", ".join(f'"file://{d}/m{i}.img?size=1M&create=1"' for i in range(3))
    return Controller.from_config(config.loads(f"""
[controller]
chunk_size = "4K"
metadata_dir = "{d}/meta"
[[lun]]
name = "lun0"
url = "file://{d}/lun0.img?size=1M&create=1"
[lun.pool]
members = [{members}]
"""))


@pytest.mark.parametrize("maps_lost", [False, True])
def test_a_crash_never_hides_a_changed_chunk(tmp_path, maps_lost):
    ctl = _file_controller(tmp_path)
    ctl.settle()
    ctl.write("lun0", 0, b"\x01" * 4096)
    ctl.trigger("lun0")
    ctl.settle()                                 # t1 proven: a backup across the crash too
    for chunk in (3, 17, 200):
        ctl.write("lun0", chunk * 4096, b"\x02" * 4096)
    ctl._close_devices()                         # a crash: nothing persisted, no clean flag
    if maps_lost:
        import os
        os.unlink(tmp_path / "meta" / "lun0.maps")   # the epoch maps cannot be trusted any more
    ctl = _file_controller(tmp_path)
    try:
        assert ctl.recovered == "crash"
        changed = {o // 4096 for o, n, dirty in ctl.changed_since("lun0.t1") if dirty
                   for o in range(o, o + n, 4096)}
        assert {3, 17, 200} <= changed
        if maps_lost:
            assert changed == set(range(256))    # it cannot tell: every chunk is reported changed
        else:
            assert 0 not in changed              # written before the cut and not since
    finally:
        ctl.close()


def _doc_block(marker: str) -> str:
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "operations.md")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    m = re.search(r"<!-- incremental-backup: " + marker + r" -->\n```sh\n(.*?)```", text, re.S)
    assert m, f"docs/operations.md has no {marker} block"
    return m.group(1)


@needs_nbdinfo
@pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("nbdcopy") is None,
                    reason="qemu-img and nbdcopy are not installed")
def test_the_worked_incremental_backup_of_the_docs(served, tmp_path):
    ctl, link, endpoint, addr = served
    port = endpoint.rsplit(":", 1)[1]
    rng = random.Random(7)
    model = TouchModel()
    client = RawClient(addr).connect("lun0")
    run_stream(rng, client, link, model, triggers=3)

    def sh(block: str):
        return subprocess.run(["bash", "-c", "set -e -o pipefail\n" + block.replace("10809", port)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
    full = sh(_doc_block("full"))
    assert full.returncode == 0, full.stderr
    run_stream(rng, client, link, model, triggers=2)   # t4, t5: the increment to copy
    assert model.ref.snapshot(5) != model.ref.snapshot(3)
    stale = sh(f"qemu-img compare -f raw -F raw full.img nbd://127.0.0.1:{port}/lun0.t5")
    assert stale.returncode == 1, stale.stdout + stale.stderr
    inc = sh(_doc_block("increment"))
    assert inc.returncode == 0, inc.stderr
    assert "Images are identical." in inc.stdout
    assert (tmp_path / "full.img").read_bytes() == model.ref.snapshot(5)
