"""Known-zero extents: whatever `allocation()` or NBD BLOCK_STATUS reports as zero reads as zeros.

A TRIM or WRITE_ZEROES that covers only part of a chunk must not make the chunk known-zero: a
client that trusts the map (qemu-img convert, nbdcopy) would skip the data still in it.
Property-tested over random write / trim / zeroes streams on RAM and file primaries and several
chunk sizes, and checked once through a real `splitpoint serve` with nbdinfo --map.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint import config as cfgmod
from splitpoint.demo import ServerProcess
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import STATE_ZERO

SIZE = 64 << 10
BLOCK = 512
NBLOCKS = SIZE // BLOCK


def zero_extents_read_as_zeros(ctl, lun="lun0"):
    """Every extent reported zero, and the bytes it covers; fails naming the first that is not."""
    data = ctl.luns[lun].device.read(0, SIZE)
    runs = ctl.allocation(lun, 0, SIZE)
    assert sum(n for _o, n, _f in runs) == SIZE and runs[0][0] == 0
    for off, n, flags in runs:
        if flags & STATE_ZERO and data[off:off + n].count(0) != n:
            first = off + next(i for i, b in enumerate(data[off:off + n]) if b)
            raise AssertionError(f"[{off}, {off}+{n}) is reported zero but byte {first} is not")


ops = st.lists(st.tuples(st.sampled_from(["write", "write", "trim", "zeroes"]), st.integers(0, NBLOCKS - 1),
                         st.integers(1, 48), st.integers(1, 255)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(stream=ops, chunk=st.sampled_from([1024, 4096, 16384]), backend=st.sampled_from(["ram", "file"]))
def test_every_extent_reported_zero_reads_as_zeros(tmp_path_factory, stream, chunk, backend):
    url = (f"ram://?size={SIZE}" if backend == "ram"
           else f"file://{tmp_path_factory.mktemp('z')}/lun0.img?size={SIZE}&create=1")
    ctl = Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = {chunk}
[[lun]]
name = "lun0"
url = "{url}"
"""))
    try:
        for kind, block, nblocks, value in stream:
            off, n = block * BLOCK, min(nblocks, NBLOCKS - block) * BLOCK
            if kind == "write":
                ctl.write("lun0", off, bytes([value]) * n)
            elif kind == "trim":
                ctl.trim("lun0", off, n)
            else:
                ctl.write_zeroes("lun0", off, n)
            zero_extents_read_as_zeros(ctl)
    finally:
        ctl.close()


def test_partial_chunk_trim_and_zeroes_leave_the_chunk_data(tmp_path):
    ctl = Controller.from_config(cfgmod.loads(f"""
[controller]
chunk_size = 4096
[[lun]]
name = "lun0"
url = "ram://?size={SIZE}"
"""))
    try:
        ctl.write("lun0", 0, b"\x5a" * (4 * 4096))
        ctl.trim("lun0", 512, 3072)                   # inside chunk 0
        ctl.write_zeroes("lun0", 4096 + 2048, 4096)   # the end of chunk 1 and the start of chunk 2
        ctl.write_zeroes("lun0", 3 * 4096, 4096)      # all of chunk 3: known zero
        assert ctl.allocation("lun0", 0, 4 * 4096) == [(0, 3 * 4096, 0), (3 * 4096, 4096, 3)]
        zero_extents_read_as_zeros(ctl)
    finally:
        ctl.close()


def test_nbd_block_status_zero_extents_read_as_zeros(tmp_path):
    for tool in ("qemu-io", "nbdinfo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make test installs it)")
    size = 1 << 20
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f"""
[controller]
chunk_size = "4K"
[[lun]]
name = "lun0"
url = "ram://?size={size}"
""")
    rng = random.Random(15)
    cmds = ["write -P 0x33 0 256K"]
    for _ in range(24):
        off = rng.randrange(0, 256 << 10, 512)
        n = rng.randrange(512, 12 << 10, 512)
        cmds.append(f"{rng.choice(['discard', 'write -z'])} {off} {n}")
    with ServerProcess(str(tmp_path / "run"), config=str(cfg)) as server:
        args = ["qemu-io", "-f", "raw"]
        for c in cmds:
            args += ["-c", c]
        subprocess.run(args + [server.uri("lun0")], check=True, capture_output=True, timeout=60)
        got = subprocess.run(["nbdinfo", "--map", "--json", server.uri("lun0")], check=True,
                             capture_output=True, text=True, timeout=60)
        zero = [(e["offset"], e["length"]) for e in json.loads(got.stdout) if e["type"] & 2]
        assert zero, "no extent reported zero at all"
        checks = []
        for off, n in zero:
            checks += ["-c", f"read -P 0 {off} {n}"]
        read = subprocess.run(["qemu-io", "-f", "raw", "-r"] + checks + [server.uri("lun0")],
                              capture_output=True, text=True, timeout=60)
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, \
            f"an extent BLOCK_STATUS reports zero does not read as zeros:\n{read.stdout}"
