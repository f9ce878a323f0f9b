"""The controller against the independent reference model (tests/reference.py).

A hypothesis state machine drives random WRITE / TRIM / WRITE_ZEROES / FLUSH /
TRIGGER streams (single requests and bursts drained in batches) through pools
of 1-4 members, several chunk sizes, synchronous and asynchronous mirrors and
cascades, with resync slices interleaved with the writes (including TRIGGERs
while a member is still resyncing). Checked after every step:
- the primary equals the reference;
- every extent `allocation()` reports zero reads as zeros in the reference;
- every backup the controller reports as consistent equals the reference
  snapshot of exactly the prefix before its TRIGGER (no false backups);
A rare example also carries a long stream (over a thousand writes, checked pass by pass), so an
event of one in a thousand (a mirror write lost) happens within one example. And at the end,
after the background work settles:
- each pool holds the newest TRIGGERs it should (its rotation is LRU);
- each active member and the primary backup LUN equal their source.
"""
from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from splitpoint import config as cfgmod
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.requests import STATE_ZERO, Op
from tests.reference import FLUSH, TRIGGER, TRIM, WRITE, ZEROES, ReferenceLun

SIZE = 64 << 10
BLOCK = 512
NBLOCKS = SIZE // BLOCK
EXAMPLES = int(os.environ.get("SPLITPOINT_MODEL_EXAMPLES", "1000"))
#: writes in a long stream (over a thousand: rare events such as one op in 1000 lost must show) ...
LONG_WRITES = 1024
#: ... carried by about one example in this many (they cost ~50 ms each)
LONG_ODDS = 25


def model_config(pool_size: int, chunk: int, mirror: str, layout: str, pool_mirror: str, slice_chunks: int,
                 queue_ops: int) -> cfgmod.Config:
    members = ", ".join(f'"ram://?size={SIZE}"' for _ in range(pool_size))
    text = f"""
[controller]
chunk_size = {chunk}
digest_region = {max(chunk, 4096)}
async_queue_ops = {queue_ops}
ring_capacity = 64

[resync]
slice = {chunk * slice_chunks}

[[lun]]
name = "lun0"
url = "ram://?size={SIZE}"
"""
    if layout in ("local", "both"):
        text += f"""
[lun.pool]
mirror = "{mirror}"
members = [{members}]
"""
    if layout in ("cascade", "both"):
        text += f"""
[lun.backup]
url = "ram://?size={SIZE}"
mirror = "{mirror}"
[lun.backup.pool]
mirror = "{pool_mirror}"
members = [{members}]
"""
    return cfgmod.loads(text)


blocks = st.integers(0, NBLOCKS - 1)
lengths = st.integers(1, 40)


def _payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


class ControllerModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.ctl = None

    @initialize(pool_size=st.integers(1, 4), chunk=st.sampled_from([512, 1024, 4096, 16384]),
                mirror=st.sampled_from(["sync", "async"]), pool_mirror=st.sampled_from(["sync", "async"]),
                layout=st.sampled_from(["local", "local", "cascade", "both"]),
                slice_chunks=st.integers(1, 4), queue_ops=st.sampled_from([2, 8, 1024]),
                long_stream=st.integers(0, LONG_ODDS - 1))
    def setup(self, pool_size, chunk, mirror, pool_mirror, layout, slice_chunks, queue_ops, long_stream):
        self.ctl = Controller.from_config(model_config(pool_size, chunk, mirror, layout, pool_mirror,
                                                       slice_chunks, queue_ops))
        self.ref = ReferenceLun(SIZE)
        self.pool_size = pool_size
        self.lun = self.ctl.luns["lun0"]
        self.seen_consistent: set[int] = set()
        self.states_seen: set[str] = set()
        self.steps = 0
        self.long_stream_due = long_stream == 0   # about one example in LONG_ODDS carries a long stream

    def _clip(self, block, nblocks):
        nblocks = min(nblocks, NBLOCKS - block)
        return block * BLOCK, nblocks * BLOCK

    # -- single requests (each polls: the background step runs a resync slice right after) --------------
    @rule(block=blocks, nblocks=lengths, seed=st.integers(0, 1 << 30), fua=st.booleans())
    def write(self, block, nblocks, seed, fua):
        offset, length = self._clip(block, nblocks)
        data = _payload(seed, length)
        self.ctl.write("lun0", offset, data, fua=fua)
        self.ref.apply(WRITE, offset, data)

    @rule(block=blocks, nblocks=lengths)
    def trim(self, block, nblocks):
        offset, length = self._clip(block, nblocks)
        self.ctl.trim("lun0", offset, length)
        self.ref.apply(TRIM, offset, length)

    @rule(block=blocks, nblocks=lengths)
    def write_zeroes(self, block, nblocks):
        offset, length = self._clip(block, nblocks)
        self.ctl.write_zeroes("lun0", offset, length)
        self.ref.apply(ZEROES, offset, length)

    @rule()
    def flush(self):
        self.ctl.flush("lun0")
        self.ref.apply(FLUSH)

    @rule(label=st.text(max_size=12))
    def trigger(self, label):
        result = self.ctl.trigger("lun0", label)
        self.ref.apply(TRIGGER)
        assert result.id == self.ref.triggers
        assert result.label == label

    @rule(n=st.integers(1, 3))
    def idle(self, n):
        for _ in range(n):
            self.ctl.poll()   # nothing queued: a full (idle) background slice

    # -- a burst: several requests queued, then drained in batches of random size ------------------
    @rule(ops=st.lists(st.tuples(st.sampled_from([WRITE, WRITE, TRIM, ZEROES, FLUSH, TRIGGER]), blocks, lengths,
                                 st.integers(0, 1 << 30)), min_size=2, max_size=12),
          batch=st.integers(1, 8))
    def burst(self, ops, batch):
        done = []
        for kind, block, nblocks, seed in ops:
            offset, length = self._clip(block, nblocks)
            if kind == WRITE:
                data = _payload(seed, length)
                self.ctl.submit("lun0", Op.WRITE, offset, data=data, callback=done.append)
                self.ref.apply(WRITE, offset, data)
            elif kind in (TRIM, ZEROES):
                self.ctl.submit("lun0", Op.TRIM if kind == TRIM else Op.WRITE_ZEROES, offset, length,
                                callback=done.append)
                self.ref.apply(kind, offset, length)
            elif kind == FLUSH:
                self.ctl.submit("lun0", Op.FLUSH, callback=done.append)
                self.ref.apply(FLUSH)
            else:
                self.ctl.submit("lun0", Op.TRIGGER, label=f"b{seed}", callback=done.append)
                self.ref.apply(TRIGGER)
        while len(done) < len(ops):
            self.ctl.poll(batch)
        assert all(c.error is None for c in done), [c.error for c in done]
        seqs = [c.seq for c in done]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        ids = [c.trigger.id for c in done if c.trigger is not None]
        assert ids == list(range(self.ref.triggers - len(ids) + 1, self.ref.triggers + 1))

    # -- a rare long stream: enough writes that an event of one in a thousand happens ---------------
    @precondition(lambda self: self.ctl is not None and self.long_stream_due)
    @rule(seed=st.integers(0, 1 << 30), passes=st.integers(LONG_WRITES // NBLOCKS, LONG_WRITES // NBLOCKS + 2))
    def long_stream(self, seed, passes):
        """At least LONG_WRITES one-block writes from a seed (cheap to draw), in bursts drained in
        batches; each pass writes every block once, so nothing in a pass overwrites a write lost on a
        mirror path, and each pass ends with the settled checks (members equal their source)."""
        self.long_stream_due = False
        rng = random.Random(seed)
        self.ctl.settle()
        done = []
        for _ in range(passes):
            order = list(range(NBLOCKS))
            rng.shuffle(order)
            for i in range(0, NBLOCKS, 48):   # a burst fits in the ring (capacity 64)
                want = len(done) + len(order[i:i + 48])
                for block in order[i:i + 48]:
                    data = rng.randbytes(BLOCK)
                    self.ctl.submit("lun0", Op.WRITE, block * BLOCK, data=data, callback=done.append)
                    self.ref.apply(WRITE, block * BLOCK, data)
                while len(done) < want:
                    self.ctl.poll(rng.randint(1, 64))
            assert all(c.error is None for c in done), [c.error for c in done if c.error]
            self._settled_checks()
        event("long stream")

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def primary_matches_reference(self):
        if self.ctl is not None:
            self.steps += 1
            for pool in self.lun.pools:
                self.states_seen.update(m.state for m in pool.members)
            assert self.lun.device.read(0, SIZE) == bytes(self.ref.data)

    @invariant()
    def known_zero_extents_read_as_zeros(self):
        # a client trusting base:allocation skips what is reported zero: it must read as zeros
        if self.ctl is not None:
            for off, n, flags in self.ctl.allocation("lun0", 0, SIZE):
                if flags & STATE_ZERO:
                    assert self.ref.data[off:off + n].count(0) == n, f"[{off}, {off}+{n}) reported zero is not"

    @invariant()
    def consistent_backups_are_exact(self):
        if self.ctl is None:
            return
        for b in self.ctl.backups("lun0"):
            got = self.ctl.read_backup("lun0", b.trigger_id, 0, SIZE)
            assert got == self.ref.snapshot(b.trigger_id), f"backup of TRIGGER {b.trigger_id} ({b.member}) is not exact"
            self.seen_consistent.add(b.trigger_id)

    @precondition(lambda self: self.ctl is not None)
    @rule()
    def settle_and_check(self):
        self._settled_checks()

    def _settled_checks(self):
        self.ctl.settle()
        lun = self.lun
        if lun.backup_node is not None:
            assert lun.backup_node.device.read(0, SIZE) == bytes(self.ref.data)
        for pool in lun.pools:
            if pool.active is not None:
                assert pool.active.device.read(0, SIZE) == pool.source.device.read(0, SIZE)
            keep = 1 if self.pool_size == 1 else self.pool_size - 1
            want = set(range(max(1, self.ref.triggers - keep + 1), self.ref.triggers + 1))
            have = {m.manifest.trigger_id for m in pool.backups()}
            assert have == want, (pool.name, have, want)
            for m in pool.backups():
                assert m.manifest.digest is not None
                assert m.device.read(0, SIZE) == self.ref.snapshot(m.manifest.trigger_id)
        for r in self.ctl.verify("lun0"):
            assert r.ok, r

    def teardown(self):
        if self.ctl is not None:
            event(f"steps >= {self.steps // 10 * 10}")
            event(f"triggers >= {min(self.ref.triggers, 8)}")
            for state in self.states_seen:
                event(f"member state seen: {state}")
            try:
                self._settled_checks()
            finally:
                self.ctl.close()


ControllerModel.TestCase.settings = settings(max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
                                             suppress_health_check=[HealthCheck.too_slow])
TestControllerModel = ControllerModel.TestCase
