"""LUN nodes: a device that applies the sequenced stream, tracks what changed, and feeds mirror paths.

Owns, for one LUN (the primary, or a primary backup LUN in a cascade): the
epoch map ("chunk last written in epoch e"), the known-zero chunks reported
as allocation states, copy-on-write for pool members cut at a TRIGGER while
still completing, forwarding each op to its mirror paths in order, and the
record of its maps and place in the stream that the metadata store keeps. A primary backup
LUN is also the target of its upstream path, with its own resync when it is
behind. It never decides what a TRIGGER does to a pool, nor what a restart
may trust: recovery (``firmware/recovery.py``) does.
"""
from __future__ import annotations

import errno
import time

import numpy as np

from splitpoint import pyx
from splitpoint.firmware import errors as E
from splitpoint.firmware.requests import FLAG_FUA, Op
from splitpoint.firmware.resync import Sweep, copy_between
from splitpoint.hal import DeviceGoneError, HalError


_em = pyx.select("epochmap")
_memlun = pyx.select("memlun")

_WRITE = int(Op.WRITE)
_TRIM = int(Op.TRIM)
_ZEROES = int(Op.WRITE_ZEROES)


class LunNode:
    """A LUN that applies data ops in stream order and forwards them down its mirror paths."""

    def __init__(self, name: str, device, chunk_size: int, known_zero: bool = False, url: str = ""):
        self.name = name
        self.device = device
        self.url = url                 # the device's URL in the configuration (recorded in the metadata)
        self.size = device.size
        self.block_size = device.block_size
        self.chunk_size = chunk_size
        self.epochs = _em.EpochMap(self.size, chunk_size)
        self.zeros = _em.ChunkBitmap(self.size, chunk_size)   # chunks known to read as zeros
        if known_zero:
            self.zeros.set_all()
        self._zeros_any = known_zero
        self.paths: list = []          # MirrorPaths fed by this node, in order
        self._forwards: list = []      # what apply() calls for each path (a sync pool's apply, else path.forward)
        self.cow: list = []            # pool members cut at a TRIGGER that still need chunks from here
        self.epoch = 1                 # epoch of the ops applied most recently
        self.upstream = None           # the MirrorPath feeding this node (a primary backup LUN), or None
        self.sweep: Sweep | None = None  # resync from upstream while this node is behind
        self.failed: str | None = None
        self.missed: list[dict] = []   # TRIGGERs its device (one that cuts itself) could not cut exactly
        self.on_behind = None          # called when a sweep starts (a device failure): the owner schedules it
        self.cut_epochs: dict[int, int] = {}   # TRIGGER id -> its epoch, of cuts sent to a device that cuts itself
        self.resume_far: str | None = None   # the far side an incremental resync counts on (its board id)
        self.last_resync: dict | None = None   # since which epoch the latest resync after a device failure copies
        self.incarnation = getattr(device, "incarnation", 0)   # the device's session the bytes below are known in

    @property
    def persistent(self) -> bool:
        """Its device keeps its bytes across a restart of this process."""
        return self.device.persistent

    # -- applying the stream -------------------------------------------------------------
    def apply(self, op: int, offset: int, length: int, data, flags: int, epoch: int) -> None:
        """Apply one data op, mark it, and forward it on every path (in that order)."""
        if self.cow:
            self._copy_on_write(offset, length)
        dev = self.device
        if op == _WRITE:
            dev.write(offset, data, flags & FLAG_FUA)   # through the contract: bounds, read-only, filters
            if self._zeros_any:
                self.zeros.clear_range(offset, length)
        else:
            if op == _TRIM:
                dev.trim(offset, length)
            else:
                dev.write_zeroes(offset, length, flags & FLAG_FUA)
            self._mark_zero(offset, length)
        self.epochs.mark(offset, length, epoch)
        self.epoch = epoch
        for forward in self._forwards:
            forward(op, offset, length, data, flags, epoch)

    def check_range(self, offset: int, length: int, writing: bool, aligned: bool = True) -> None:
        """The one range check of a request on this LUN: non-empty, inside it and (``aligned``) on its blocks.

        Raises the specific error; past the end it is OutOfRangeError with ENOSPC for a write, EINVAL for a read."""
        if length and 0 <= offset and offset + length <= self.size:
            if not (aligned and (offset | length) & (self.block_size - 1)):
                return
        if not length:
            raise E.ZeroLengthError(f"zero-length request at offset {offset} on {self.name}")
        if offset < 0 or offset + length > self.size:
            raise E.OutOfRangeError(f"request [{offset}, {offset}+{length}) is past the end of {self.name} "
                                    f"({self.size} bytes)", errno.ENOSPC if writing else errno.EINVAL)
        raise E.MisalignedError(f"request [{offset}, {offset}+{length}) is not aligned to {self.name}'s "
                                f"block size {self.block_size}")

    def read(self, offset: int, length: int) -> bytes:
        """Bytes of [offset, offset+length) through the device's contract (its own bounds check applies)."""
        return self.device.read(offset, length)

    def add_path(self, path) -> None:
        """Feed ``path`` from now on, after the paths already fed."""
        self.paths.append(path)
        self._forwards.append(path.direct())

    def flush(self) -> None:
        self.device.flush()
        for path in self.paths:
            path.flush()

    def flush_device(self) -> None:
        """Flush this node's own device only; a HalError reaches the caller."""
        self.device.flush()

    def trigger(self, event) -> None:
        """A TRIGGER reaching this node as a mirror target: be exact at this point, then pass it on."""
        self.check_medium()
        if self.sweep is not None:
            if self.upstream is not None and len(self.upstream) == 0:
                try:
                    self.finish_sweep(drain=False)  # upstream sits exactly at this TRIGGER: copy up to it
                except HalError:   # the device failed (a link that stayed down): behind again, resyncing
                    event = event.inexact()
            else:
                event = event.inexact()  # upstream is already past it: nothing below can be cut exactly
        if getattr(self.device, "cuts_itself", False):
            self._forward_cut(event)
        self.epoch = event.epoch + 1
        for path in self.paths:
            path.trigger(event)

    def _forward_cut(self, event) -> None:
        """The device is a controller (a device link, a board running the firmware): it cuts its own
        backups at this TRIGGER, queued behind every write before it. One this node could not hold
        exactly goes as MISSED: the far side records it and cuts nothing."""
        if event.exact:
            self.cut_epochs[event.id] = event.epoch
            if len(self.cut_epochs) > 256:
                del self.cut_epochs[next(iter(self.cut_epochs))]
        try:
            self.device.trigger(event.id, event.label, missed=not event.exact)
        except HalError as exc:
            self.missed.append({"id": event.id, "label": event.label, "why": f"device error: {exc}"})
            self.device_failed(exc)
        else:
            if not event.exact:
                self.missed.append({"id": event.id, "label": event.label,
                                    "why": "this LUN was behind its source (resync): no exact cut there"})
        del self.missed[:-64]

    def zeros_restored(self) -> None:
        """The zero bitmap was replaced or edited wholesale (a restore): recount whether any chunk is known zero."""
        self._zeros_any = self.zeros.count() > 0

    # -- the persisted maps ---------------------------------------------------------------------
    def maps(self) -> list[bytes]:
        """The epoch map and the known-zero bitmap, as the metadata store keeps them."""
        return [self.epochs.to_bytes(), self.zeros.to_bytes()]

    def load_maps(self, epochs: bytes, zeros: bytes) -> None:
        """Replace both maps by ones ``maps()`` saved (the sweeps reading them must follow)."""
        self.epochs = _em.EpochMap.from_bytes(self.size, self.chunk_size, epochs)
        self.zeros = _em.ChunkBitmap.from_bytes(self.size, self.chunk_size, zeros)
        self.zeros_restored()

    def newest_epoch(self) -> int:
        """The newest epoch any chunk was written in (0: none)."""
        return int(np.frombuffer(self.epochs.to_bytes(), dtype=np.uint32).max(initial=0))

    def mark_written(self, extents, epoch: int) -> None:
        """Chunks that may have been written in ``epoch`` without being recorded (a crash): mark them so,
        and no longer known to be zero."""
        for off, ln in extents:
            self.epochs.mark(off, ln, epoch)
            self.zeros.clear_range(off, ln)
        self.zeros_restored()

    def forget_zeros(self) -> None:
        """Nothing is known to read as zeros any more (maps that cannot be trusted)."""
        self.zeros.clear()
        self.zeros_restored()

    def _mark_zero(self, offset: int, length: int) -> None:
        cs = self.chunk_size
        first = -(-offset // cs)
        end = offset + length
        last = self.size // cs if end >= self.size and self.size % cs else end // cs
        if last > first:
            self.zeros.set_range(first * cs, min(last * cs, self.size) - first * cs)
            self._zeros_any = True

    def _copy_on_write(self, offset: int, length: int) -> None:
        cs = self.chunk_size
        c0 = offset // cs
        c1 = (offset + length - 1) // cs + 1
        for member in list(self.cow):
            ext = member.sweep.pending(c0, c1)
            if ext:
                try:
                    member.sweep.copied += copy_between(self.device, member.device, ext)
                except HalError as exc:   # the member's device failed: that cut is lost, the write is not
                    member.pool.device_failed_member(member, exc)

    # -- allocation (STATE_HOLE | STATE_ZERO runs) ----------------------------------------------
    def allocation(self, offset: int, length: int, hole_flags: int) -> list[tuple[int, int, int]]:
        """Runs of (offset, length, flags) covering [offset, offset+length): flags 0 for data."""
        cs = self.chunk_size
        end = offset + length
        out = []
        pos = offset
        if self._zeros_any:
            for zo, zl in self.zeros.extents(offset // cs, (end - 1) // cs + 1):
                zs, ze = max(zo, offset), min(zo + zl, end)
                if zs >= ze:
                    continue
                if zs > pos:
                    out.append((pos, zs - pos, 0))
                out.append((zs, ze - zs, hole_flags))
                pos = ze
        if pos < end:
            out.append((pos, end - pos, 0))
        return out

    # -- being a mirror target (primary backup LUN) ----------------------------------------
    def attach_upstream(self, path) -> None:
        self.upstream = path

    def needs_prompt_trigger(self) -> bool:
        # only this node's own resync copies from upstream; pools below it copy from this node,
        # which applies the stream in order, and their own paths decide for themselves
        return self.sweep is not None

    def save_target_state(self) -> dict:
        """What the metadata store keeps of this node as a primary backup LUN: where it stands."""
        return {"url": self.url, "epoch": self.epoch,
                "sweep": None if self.sweep is None else self.sweep.save_state()}

    def restore_target_state(self, doc: dict, epoch: int, exact: bool) -> None:
        """Take back a ``save_target_state`` record at ``epoch``. ``exact``: a clean close on a persistent
        device, so its resync resumes where it was; otherwise it resyncs in full."""
        self.epoch = epoch
        s = doc.get("sweep")
        if exact:
            self.sweep = None if s is None else Sweep(self.upstream.source.epochs, s["since"], cursor=s["cursor"])
        else:
            self.start_sweep(0)

    def check_medium(self) -> None:
        """A mirror target whose device lost its session (a far controller or board restarted, even while
        idle, with nothing in flight to fail) holds unknown bytes: resync it before anything is cut there."""
        inc = getattr(self.device, "incarnation", 0)
        if inc != self.incarnation:
            self.incarnation = inc
            if self.upstream is not None:
                self.device_failed(DeviceGoneError(f"{self.name}: its device lost its session (restarted or "
                                                   f"reset; incarnation {inc}): its bytes are unknown"))

    def device_failed(self, exc) -> None:
        """The device failed an op: it is behind from now on and must be resynced in full."""
        self.failed = str(exc)
        since, self.resume_far = self._resume_point()
        self.start_sweep(since)
        self.last_resync = {"since": since, "why": str(exc)[:200]}

    def _resume_point(self) -> tuple[int, str | None]:
        """Where a resync after a device failure may start: past the newest exact TRIGGER a device link's far
        side acknowledged (every chunk written after it, by the epoch map), while that far side is the same
        process (its board id); else 0, everything."""
        acked = getattr(self.device, "acked_trigger", None)
        if acked is None or self.upstream is None:
            return 0, None
        epoch = self.cut_epochs.get(acked[0])
        if epoch is None or self._far_id() != acked[1]:
            return 0, None
        return epoch + 1, acked[1]

    def _far_id(self) -> str | None:
        info = getattr(self.device, "info", None)
        return None if info is None else info.board_id

    def start_sweep(self, since: int) -> None:
        if self.upstream is None:
            return
        self.sweep = Sweep(self.upstream.source.epochs, since)
        if self.on_behind is not None:
            self.on_behind()

    def sweep_step(self, budget: int, drain: bool = True, raise_errors: bool = False) -> int:
        """Copy a slice from upstream as ordinary writes (so they mark, copy-on-write and go downstream).

        A device error starts the sweep over (``device_failed``); ``raise_errors``: and reaches the caller."""
        sweep = self.sweep
        if sweep is None:
            return 0
        if self.resume_far is not None and self._far_id() != self.resume_far:
            # the far side restarted since its last acknowledged cut: it may hold anything, copy everything
            self.resume_far = None
            self.last_resync = {"since": 0, "why": "the far side restarted"}
            sweep = self.sweep = Sweep(self.upstream.source.epochs, 0)
        room = getattr(self.device, "write_budget", None)   # a device queue: never queue more than it moves
        if room is not None:
            budget = min(budget, max(room(), self.chunk_size))
        if drain:
            self.upstream.drain()   # upstream and this node at the same point of the stream
        src = self.upstream.source
        todo, cursor = sweep.plan(budget)
        n = 0
        try:
            for off, ln in todo:
                self.apply(_WRITE, off, ln, src.device.read(off, ln), 0, self.epoch)
                n += ln
        except HalError as exc:
            self.device_failed(exc)
            if raise_errors:
                raise
            return n
        sweep.advance(cursor, n)
        if sweep.done:
            self.sweep = None
            self.failed = None
            self.resume_far = None
        return n

    def finish_sweep(self, drain: bool = True) -> None:
        while self.sweep is not None:
            self.sweep_step(64 << 20, drain, raise_errors=True)

    def status(self) -> dict:
        return {"name": self.name, "device": self.device.describe(), "size": self.size,
                "block_size": self.block_size, "epoch": self.epoch,
                "state": "syncing" if self.sweep is not None else ("failed" if self.failed else "in-sync"),
                "resync": None if self.sweep is None else self.sweep.progress(),
                "paths": [p.status() for p in self.paths], "missed_cuts": list(self.missed),
                "last_resync": self.last_resync}


class Lun(LunNode):
    """A primary LUN: where host requests execute and TRIGGERs split the mirror."""

    def __init__(self, name: str, device, chunk_size: int, known_zero: bool = False, url: str = ""):
        super().__init__(name, device, chunk_size, known_zero, url)
        self.read_only = bool(getattr(device, "read_only", False))
        self.next_trigger_id = 1       # TRIGGER ids count from 1 per LUN
        self.pools: list = []          # every pool downstream (local pool first, then cascades)
        self.backup_node: LunNode | None = None
        self.holds: list = []          # uncommitted consistency-group TRIGGERs cut here: completions wait
        self.held: list = []           # (callback, Completion) held for them, in order
        self.created = time.time()
        self.restoring: str | None = None   # the backup a RESTORE is copying now (kept across a crash)
        self.restore_note: str | None = None   # what the last restart did with an interrupted RESTORE
        self._memory = None            # (MemoryLun, what it was built from) of memory_path()

    def memory_path(self):
        """The MemoryLun that may execute a WRITE or READ on this LUN now, or None.

        Only where the kernel does exactly what ``apply`` and ``read`` would: no copy-on-write
        pending, a primary device and a mirror target (the active member of one synchronous
        pool, or none) whose HAL contract declares ``writable_buffer`` and that are writable, and
        no other path. A filter, a DeviceQueue, a file or a cascade never qualifies. Valid until
        the next request that takes the general path (a TRIGGER rotates the pool)."""
        dev = self.device
        if self.cow or dev.read_only or getattr(dev, "writable_buffer", False) is not True:
            return None
        paths = self.paths
        if len(paths) > 1:
            return None
        try:
            buf = dev.buffer()
        except HalError:        # a closed device: the general path gives the request its error
            return None
        mirror = None
        if buf is None:
            return None
        if paths:
            path = paths[0]
            pool = path.target
            if not path.sync or not getattr(pool, "absorbs_errors", False):
                return None
            member = pool.active
            if member is not None:
                mdev = member.device
                if (mdev.read_only or getattr(mdev, "writable_buffer", False) is not True
                        or mdev.size < self.size):
                    return None
                try:
                    mirror = mdev.buffer()
                except HalError:    # the general path demotes the member
                    return None
                if mirror is None:
                    return None
        zeros = self.zeros if self._zeros_any else None
        cached = self._memory
        if cached is not None:
            mem, was = cached
            if was[0] is buf and was[1] is mirror and was[2] is self.epochs and was[3] is zeros:
                return mem
        mem = _memlun.MemoryLun(buf, mirror, self.epochs, zeros, self.size, self.block_size)
        self._memory = (mem, (buf, mirror, self.epochs, zeros))
        return mem

    def apply_unaligned(self, op: int, offset: int, length: int, data, flags: int) -> None:
        """A WRITE, TRIM or WRITE_ZEROES whose range need not be block-aligned, in the current epoch.

        Executed in its place in the sequence: the partial blocks at either end are read and
        rewritten whole, so a request sequenced just before or after it is never lost. A TRIM only
        trims the whole blocks inside its range (a trim is advisory). What goes down the mirror paths
        is aligned, as always."""
        bs = self.block_size
        end = offset + length
        start, stop = offset - offset % bs, -(-end // bs) * bs
        inner0, inner1 = -(-offset // bs) * bs, end - end % bs   # the whole blocks inside the range
        if op == _TRIM:
            if inner0 < inner1:
                self.apply(_TRIM, inner0, inner1 - inner0, None, flags, self.epoch)
        elif op == _WRITE:
            self._write_whole_blocks(start, stop, offset, data, flags)
        elif inner0 < inner1:
            self.apply(_ZEROES, inner0, inner1 - inner0, None, flags, self.epoch)
            if offset < inner0:
                self._write_whole_blocks(start, inner0, offset, bytes(inner0 - offset), flags)
            if inner1 < end:
                self._write_whole_blocks(inner1, stop, inner1, bytes(end - inner1), flags)
        else:
            self._write_whole_blocks(start, stop, offset, bytes(length), flags)

    def _write_whole_blocks(self, start: int, stop: int, offset: int, body, flags: int) -> None:
        """Write ``body`` at ``offset`` as the whole blocks [start, stop): the bytes around it are read first."""
        bs = self.block_size
        end = offset + memoryview(body).nbytes
        head = tail = b""
        if offset > start:
            first = self.device.read(start, bs)
            head = first[:offset - start]
            if end < stop and stop - start == bs:
                tail = first[end - start:]
        if end < stop and not tail:
            tail = self.device.read(stop - bs, bs)[end - (stop - bs):]
        self.apply(_WRITE, start, stop - start, b"".join((head, body, tail)), flags & FLAG_FUA, self.epoch)

    def flush_all(self) -> None:
        """Flush this LUN, its primary backup LUN and every pool member's device (a clean close);
        a HalError reaches the caller instead of demoting anything."""
        self.flush()
        if self.backup_node is not None:
            self.backup_node.flush_device()
        for pool in self.pools:
            pool.flush_members()

    def save_state(self) -> dict:
        """What the metadata store keeps of this primary: its geometry and its place in the stream."""
        return {"lun": self.name, "size": self.size, "chunk_size": self.chunk_size,
                "epoch": self.epoch, "next_trigger_id": self.next_trigger_id, "restoring": self.restoring}

    def restore_state(self, doc: dict, epoch: int) -> None:
        """Continue the stream of a ``save_state`` record: TRIGGER ids go on, ``epoch`` is the recovered one."""
        self.next_trigger_id = int(doc["next_trigger_id"])
        self.epoch = epoch
        self.restoring = doc.get("restoring")

    def status(self) -> dict:
        doc = super().status()
        doc.update({"read_only": self.read_only, "triggers": self.next_trigger_id - 1,
                    "backup_lun": None if self.backup_node is None else self.backup_node.status()})
        return doc
