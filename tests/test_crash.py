"""Crash safety: a child controller with file-backed LUNs and a metadata store is SIGKILLed at random points.

After each kill the controller is restarted in this process:
- every backup it reports as consistent passes verify and equals the primary
  as rebuilt from the writes sequenced before its TRIGGER (from the child's log);
- every write acknowledged with FUA, or acknowledged before an acknowledged
  FLUSH, is on the primary (a later write to the same block may have replaced it);
- the member that was active at the crash, once its recovery resync is done, equals the
  primary byte for byte; that resync copied only the chunks the write-intent log named
  (plus what the member still had pending), not the whole LUN, in most rounds;
- the restarted controller serves again, and its next backups are exact.
Some rounds end with a clean close instead: then nothing needs a resync.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller

SIZE = 128 << 10
BLOCK = 4096
ROUNDS = int(os.environ.get("SPLITPOINT_CRASH_ROUNDS", "24"))

CHILD = textwrap.dedent("""
    import os, random, sys
    sys.path.insert(0, {root!r})
    from tests.test_crash import config_for
    from splitpoint.firmware.controller import Controller
    from splitpoint.firmware.requests import FLAG_FUA, Op

    workdir, seed, clean_ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    log = os.open(os.path.join(workdir, f"log.{{seed}}"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(line, durable=False):
        os.write(log, (line + "\\n").encode())
        if durable:
            os.fsync(log)

    ctl = Controller.from_config(config_for(workdir))
    print("ready", ctl.recovered, flush=True)
    n = 0
    while clean_ops < 0 or n < clean_ops:
        n += 1
        r = rng.random()
        if r < 0.75:
            block = rng.randrange({nblocks})
            value = rng.randrange(1, 1 << 30)
            fua = rng.random() < 0.2
            data = value.to_bytes(4, "little") * ({block} // 4)
            box = []
            seq = ctl.submit("lun0", Op.WRITE, block * {block}, data=data, flags=FLAG_FUA if fua else 0, callback=box.append)
            note(f"W {{seq}} {{block}} {{value}}")
            while not box:
                ctl.poll()
            assert box[0].error is None, box[0].error
            note(f"A {{seq}} {{int(fua)}}", durable=fua)
        elif r < 0.85:
            ctl.flush("lun0")
            note("F", durable=True)
        else:
            t = ctl.trigger("lun0", f"t{{n}}")
            note(f"T {{t.seq}} {{t.id}}")
        for _ in range(rng.randrange(3)):
            ctl.poll()
    ctl.settle()
    ctl.close()
    print("closed", flush=True)
""")


def config_for(workdir: str) -> cfgmod.Config:
    img = os.path.join(workdir, "img")
    os.makedirs(img, exist_ok=True)
    members = ", ".join(f'"file://{img}/b{i}.img?size={SIZE}&create=1"' for i in range(3))
    return cfgmod.loads(f"""
[controller]
chunk_size = "{BLOCK}"
digest_region = "16K"
metadata_dir = "{workdir}/meta"

[resync]
slice = "16K"

[[lun]]
name = "lun0"
url = "file://{img}/lun0.img?size={SIZE}&create=1"

[lun.pool]
members = [{members}]
""")


class Log:
    """What the child did in one round: writes by seq, acks, flushes, triggers."""

    def __init__(self, base: bytes):
        self.base = base                                # the primary when the round started
        self.writes: dict[int, tuple[int, int]] = {}   # seq -> (block, value)
        self.order: list = []                           # ("W", seq) / ("A", seq, fua) / ("F",) in log order
        self.triggers: dict[int, int] = {}              # trigger id -> its seq

    def read(self, path: str) -> None:
        with open(path) as fh:
            lines = fh.read().split("\n")
        for line in lines[:-1]:   # the last piece may be torn by the kill
            parts = line.split()
            if parts[0] == "W":
                seq, block, value = map(int, parts[1:])
                self.writes[seq] = (block, value)
                self.order.append(("W", seq))
            elif parts[0] == "A":
                self.order.append(("A", int(parts[1]), parts[2] == "1"))
            elif parts[0] == "F":
                self.order.append(("F",))
            elif parts[0] == "T":
                self.triggers[int(parts[2])] = int(parts[1])

    def block_bytes(self, value: int) -> bytes:
        return value.to_bytes(4, "little") * (BLOCK // 4)

    def image_before(self, seq: int) -> bytes:
        """The primary rebuilt from every write sequenced before ``seq``."""
        img = bytearray(self.base)
        for s in sorted(self.writes):
            if s >= seq:
                break
            block, value = self.writes[s]
            img[block * BLOCK:(block + 1) * BLOCK] = self.block_bytes(value)
        return bytes(img)

    def durable_floor(self) -> dict[int, tuple[int, int]]:
        """block -> (seq, value) of its newest write that must have survived (FUA, or acked before a FLUSH)."""
        acked: list[int] = []
        floor: dict[int, tuple[int, int]] = {}

        def make_durable(seq):
            block, value = self.writes[seq]
            if block not in floor or floor[block][0] < seq:
                floor[block] = (seq, value)
        for item in self.order:
            if item[0] == "A":
                acked.append(item[1])
                if item[2]:
                    make_durable(item[1])
            elif item[0] == "F":
                for seq in acked:
                    make_durable(seq)
                acked = []
        return floor


def check_after_restart(ctl: Controller, log: Log, rounds: dict[int, Log]) -> bytes:
    lun = ctl.luns["lun0"]
    primary = lun.device.read(0, SIZE)
    # nothing acknowledged as durable is lost: the block holds that write or a later one to it
    for block, (seq, value) in log.durable_floor().items():
        got = primary[block * BLOCK:(block + 1) * BLOCK]
        allowed = {log.block_bytes(v) for s, (b, v) in log.writes.items() if b == block and s >= seq}
        assert got in allowed, f"block {block}: durable write seq {seq} lost"
    # no false backups: every consistent one verifies and is exactly its point in time
    for r in ctl.verify("lun0"):
        assert r.ok or r.pending, r
    for pool in lun.pools:   # digests still pending after the crash: computed now, then verified
        for m in pool.backups():
            pool.finish_digest(m)
    for r in ctl.verify("lun0"):
        assert r.ok, r
    for b in ctl.backups("lun0"):
        # a cut counts once flushed and recorded: the kill may come before the child logged its TRIGGER,
        # which then belongs to this last round (every write before it was logged before it was queued)
        cut_in = rounds.setdefault(b.trigger_id, log)
        assert b.seq == cut_in.triggers.setdefault(b.trigger_id, b.seq)
        assert ctl.read_backup("lun0", b.trigger_id, 0, SIZE) == cut_in.image_before(b.seq), \
            f"backup of TRIGGER {b.trigger_id} is not its point in time"
    return primary


@pytest.mark.slow
def test_sigkill_at_random_points_never_yields_a_false_backup_or_loses_a_durable_write(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(root=root, nblocks=SIZE // BLOCK, block=BLOCK))
    workdir = str(tmp_path / "work")
    os.makedirs(workdir)
    rng = random.Random(1234)
    kills = cleans = 0
    recovered = []
    base = bytes(SIZE)
    rounds: dict[int, Log] = {}   # trigger id -> the round that cut it
    stats = []
    partial = 0     # crash restarts whose active member resynced less than the whole LUN
    for round_no in range(ROUNDS):
        clean = round_no % 6 == 5
        child = subprocess.Popen([sys.executable, str(script), workdir, str(round_no), "60" if clean else "-1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = child.stdout.readline().split()
            assert first[:1] == ["ready"], child.stderr.read()
            recovered.append(first[1])
            if clean:
                out, err = child.communicate(timeout=60)
                assert child.returncode == 0 and "closed" in out, err
                cleans += 1
            else:
                time.sleep(rng.uniform(0.02, 0.4))
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
                kills += 1
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
            child.stderr.close()
        log = Log(base)
        log.read(os.path.join(workdir, f"log.{round_no}"))
        rounds.update({tid: log for tid in log.triggers})
        ctl = Controller.from_config(config_for(workdir))
        try:
            assert ctl.recovered == ("clean" if clean else "crash")
            if clean:
                # a clean close resumes as it was: nothing to resync, every member as it was left
                pool = ctl.luns["lun0"].pools[0]
                assert pool.active is not None and pool.active.sweep is None
                assert all(m.state in ("active", "frozen", "empty") for m in pool.members)
            base = check_after_restart(ctl, log, rounds)
            pool = ctl.luns["lun0"].pools[0]
            states = [m.state for m in pool.members]
            resync = None
            if not clean:
                rep = ctl.status()["metadata"]["recovery"]["luns"]["lun0"]
                resync = [e.get("resync_chunks") for e in rep["members"] if e["member"] == pool.active.name][0]
                partial += resync is not None and resync < SIZE // BLOCK
                ctl.settle()
                assert pool.active.state == "active"
                assert pool.active.device.read(0, SIZE) == base, "the active member is not the primary after resync"
                assert all(r.ok for r in ctl.verify("lun0"))
            stats.append((len(log.writes), len(log.triggers), len(ctl.backups("lun0")), states, resync))
        finally:
            ctl.close()
    print("\n".join(map(str, stats)))
    assert kills >= 20 and cleans >= 1
    assert partial >= kills // 2, f"only {partial} of {kills} crash recoveries were incremental"
    assert sum(st[2] > 0 for st in stats) >= ROUNDS // 4   # restarts where consistent backups were checked
