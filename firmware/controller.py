"""The controller: one sequenced request ring, executed in order on the primary and mirrored.

Owns the request ring and the table of payloads and completions keyed by
cookie, the controller loop (``poll``: drain a batch, execute each request on
its primary LUN through the HAL, forward it down the mirror paths, complete
it; then a bounded slice of background work), the TRIGGER split (O(1): the
epoch advances and the TRIGGER follows the earlier writes down every path),
the wiring of LUNs, cascades and pools from the configuration, metadata
persistence and crash recovery, and the reports (backups, status, verify).

Threading: producers on any thread only ``submit`` (a push into the MPSC ring
and a dict insert); everything else runs on the one owner thread, the thread
``start()`` creates or the front end's event loop thread (``claim_owner``).
Nothing here ever hops a request between Python threads, with one exception: the
I/O of a pool member behind a link (a board) runs on its DeviceQueue
(``firmware/devio.py``), in stream order, so a slow or unplugged board never
blocks the loop.
"""
from __future__ import annotations

import collections
import errno as _errno
import itertools
import logging
import threading
import time

import numpy as np

from splitpoint import pyx
from splitpoint.firmware import errors as E
from splitpoint.firmware.devio import DeviceQueue
from splitpoint.firmware.group import GroupToken
from splitpoint.firmware.intent import WriteIntent
from splitpoint.firmware.lun import Lun, LunNode
from splitpoint.firmware.manifest import Manifest, RegionHasher, verify_device
from splitpoint.firmware.metadata import IntentLog, MetadataStore
from splitpoint.firmware.mirror import MirrorPath
from splitpoint.firmware.pool import (CUTTING, EMPTY, FROZEN, INCONSISTENT, SYNCING, BackupPool,
                                      PoolMember)
from splitpoint.firmware.requests import (FLAGS_KNOWN, STATE_HOLE, STATE_ZERO, BackupInfo,
                                          Completion, Op, TriggerResult, VerifyResult, label_bytes,
                                          label_text)
from splitpoint.firmware.requests import FLAG_FUA, FLAG_SUB_BLOCK
from splitpoint.firmware.resync import Sweep, Throttle
from splitpoint.firmware.triggers import LABEL_MAX, TriggerEvent
from splitpoint.hal import HalError, open_device

_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_FLUSH = int(Op.FLUSH)
_TRIM = int(Op.TRIM)
_CACHE = int(Op.CACHE)
_ZEROES = int(Op.WRITE_ZEROES)
_TRIGGER = int(Op.TRIGGER)
_OPS = frozenset(int(o) for o in Op)
_U64 = 1 << 64
_U32 = 1 << 32

#: sequence numbers reserved per persisted limit (a restart skips what was left of the reserve)
SEQ_RESERVE = 1 << 20
log = logging.getLogger("splitpoint.controller")

#: seconds the loop waits for the device queues of pool members before persisting the epoch maps (else later)
QUEUE_SETTLE = 0.2
#: seconds between background polls while every background slice waits for a device queue to drain
QUEUE_POLL = 0.005

#: seconds a lazily persisted state change may wait for an idle moment
PERSIST_LAG = 0.5
#: seconds a write-intent set waits for an idle moment before the epoch maps are persisted (clearing it)
INTENT_IDLE_LAG = 0.5
#: ... and at most, under continuous load, so a crash never has to resync more than this much writing
INTENT_MAX_AGE = 5.0


def check_range(lun, offset: int, length: int, writing: bool, aligned: bool = True) -> None:
    """The one range check of a request on ``lun``: non-empty, inside it and (``aligned``) on its blocks.

    Raises the specific error; a write past the end answers ENOSPC (as NBD asks), a read EINVAL."""
    if length and 0 <= offset and offset + length <= lun.size:
        if not (aligned and (offset | length) & (lun.block_size - 1)):
            return
    if not length:
        raise E.ZeroLengthError(f"zero-length request at offset {offset} on {lun.name}")
    if offset < 0 or offset + length > lun.size:
        raise E.OutOfRangeError(f"request [{offset}, {offset}+{length}) is past the end of {lun.name} "
                                f"({lun.size} bytes)", _errno.ENOSPC if writing else _errno.EINVAL)
    raise E.MisalignedError(f"request [{offset}, {offset}+{length}) is not aligned to {lun.name}'s "
                            f"block size {lun.block_size}")


class _LateRead:
    """A backup READ that its member's DeviceQueue runs; the completion waits for it."""

    __slots__ = ("target", "member", "generation", "offset", "length")

    def __init__(self, target, member, generation: int, offset: int, length: int):
        self.target = target
        self.member = member
        self.generation = generation
        self.offset = offset
        self.length = length


class BackupTarget:
    """A request target naming a frozen backup (``<lun>.t<id>`` or ``<lun>.latest``): read-only."""

    __slots__ = ("lun", "name", "which")

    def __init__(self, lun: Lun, name: str, which):
        self.lun = lun
        self.name = name
        self.which = which   # trigger id (int) or "latest"


class Controller:
    """The controller of one device: its LUNs, their mirror paths and backup pools."""

    def __init__(self, config):
        self.config = config
        # the store first: the ring continues the sequence numbers of the previous run
        self.store = MetadataStore(config.metadata_dir) if config.metadata_dir else None
        self._seq_limit = self._load_seq_limit()
        ring_mod = pyx.select("ring")
        self._ring = ring_mod.MPSCRing(config.ring_capacity, first_seq=self._seq_limit)
        self._dtype = ring_mod.DESC_DTYPE
        if tuple(self._dtype.names) != ("seq", "offset", "cookie", "length", "op", "flags"):
            raise RuntimeError(f"ring descriptor fields {self._dtype.names} are not the documented layout")
        self._batch = np.zeros(256, dtype=self._dtype)
        self._entries: dict[int, tuple] = {}
        self._cookies = itertools.count(1)
        self.luns: dict[str, Lun] = {}
        self._pools: list[BackupPool] = []
        self._nodes: list[LunNode] = []          # primary backup LUNs (cascade hops)
        self._paths: list[MirrorPath] = []
        self._async_paths: list[MirrorPath] = []
        self._devices = []
        self._roles: list[tuple[str, str, object]] = []   # (what, url, device) of every device opened
        self._queues: dict = {}                   # DeviceQueue -> PoolMember: members behind a slow link
        self._late: collections.deque = collections.deque()   # completions of reads a DeviceQueue ran
        self._demotions: dict = {}                # PoolMember -> the error last logged for it
        self.wakeup = None                        # called from any thread by a submit while the owner may be idle
        self.on_backups_changed = None            # called on the owner thread when a backup appears or goes
        self._bg = True                           # background work may be pending
        self._bg_at = 0.0                         # ... but not before this monotonic time (throttle)
        self._closing = False
        self._closed = False
        self._owner: int | None = None
        self._thread: threading.Thread | None = None
        self._event = threading.Event()
        self._inline_lock = threading.RLock()
        self._in_poll = False
        self._idle = True                         # the owner may be waiting: the next submit wakes it
        self._released: list = []                 # consistency-group tokens committed since the last poll
        self._dirty: dict[str, float] = {}        # LUN -> when its state first changed since the last persist
        self._intents: dict = {}                  # Lun -> WriteIntent (persistent primaries with a metadata store)
        self._maps_due: set = set()               # LUN names whose epoch maps are persisted after this batch
        self.recovery: dict | None = None         # what the last restart resynced and why
        self.counters = {"requests": 0, "reads": 0, "writes": 0, "trims": 0, "zeroes": 0, "flushes": 0,
                         "triggers": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0,
                         "callback_errors": 0, "queue_full": 0, "metadata_writes": 0, "metadata_errors": 0,
                         "intent_writes": 0, "maps_writes": 0}
        self.metadata_error: str | None = None
        self.recovered = None                     # "fresh", "clean", "crash" or None (no metadata store)
        try:
            if self.store is not None:
                self._reserve_seqs()
            self._build()
            if self.store is not None:
                for lun in self.luns.values():
                    if lun.device.persistent and not lun.read_only:
                        log = IntentLog(self.store.path(f"{lun.name}.intent"), len(lun.zeros.to_bytes()))
                        self._intents[lun] = WriteIntent(lun, log)
                self._restore()
        except BaseException:
            self._close_devices()
            raise

    @classmethod
    def from_config(cls, config=None) -> "Controller":
        """A controller for a validated configuration (the embedded default when None)."""
        if config is None:
            from splitpoint import config as cfgmod
            config = cfgmod.default()
        return cls(config)

    # -- wiring ------------------------------------------------------------------------------
    def _open(self, url: str, what: str, like=None):
        try:
            dev = open_device(url)
        except HalError as exc:
            raise E.DeviceOpenError(f"{what}: cannot open {url!r}: {exc}") from None
        self._devices.append(dev)
        self._roles.append((what, url, dev))
        if like is not None and (dev.size != like.size or dev.block_size != like.block_size):
            raise E.GeometryError(
                f"{what} {url!r} is {dev.size} bytes with block {dev.block_size}, but it must match its source: "
                f"{like.size} bytes with block {like.block_size}")
        return dev

    def _build(self) -> None:
        cfg = self.config
        for lc in cfg.luns:
            dev = self._open(lc.url, f"LUN {lc.name}")
            if cfg.chunk_size % dev.block_size:
                raise E.GeometryError(f"chunk_size {cfg.chunk_size} is not a multiple of LUN {lc.name}'s "
                                      f"block size {dev.block_size}")
            lun = Lun(lc.name, dev, cfg.chunk_size, known_zero=not dev.persistent)
            self.luns[lc.name] = lun
            if lc.pool is not None:
                self._add_pool(lun, lun, lc.pool, f"{lc.name}.pool")
            if lc.backup is not None:
                bdev = self._open(lc.backup.url, f"LUN {lc.name} primary backup LUN", like=dev)
                node = LunNode(f"{lc.name}.backup", bdev, cfg.chunk_size,
                               known_zero=not bdev.persistent)
                lun.backup_node = node
                self._nodes.append(node)
                self._add_path(lun, node, lc.backup.mirror)
                if bdev.persistent or dev.persistent:
                    node.start_sweep(0)   # nothing says the two hold the same bytes yet
                if lc.backup.pool is not None:
                    self._add_pool(lun, node, lc.backup.pool, f"{lc.name}.backup.pool")

    def _queued(self, dev, what: str):
        """A pool member whose every op waits on a link runs its I/O on a DeviceQueue, off this thread."""
        if not getattr(dev, "waits_on_link", False):
            return dev
        dq = DeviceQueue(dev, what, wakeup=self._queue_event)
        self._devices[self._devices.index(dev)] = dq   # closing the queue drains it, then closes the device
        return dq

    def _queue_event(self) -> None:
        """Any thread: a DeviceQueue finished a read or failed an op; the owner looks at the next poll."""
        self._idle = False
        wake = self.wakeup
        if wake is not None:
            wake()

    def _add_path(self, source, target, mode: str) -> MirrorPath:
        path = MirrorPath(source, target, mode, self.config.async_queue_ops, self.config.async_queue_bytes)
        source.add_path(path)
        self._paths.append(path)
        if not path.sync:
            self._async_paths.append(path)
        return path

    def _add_pool(self, lun: Lun, source: LunNode, pc, name: str) -> None:
        devs = [(url, self._queued(self._open(url, f"pool {name} member {i}", like=source.device),
                                   f"pool {name} member {i}"))
                for i, url in enumerate(pc.members)]
        rs = self.config.resync
        known_zero = (not source.device.persistent and source.zeros.count() == source.zeros.nchunks
                      and not any(d.persistent for _, d in devs))
        pool = BackupPool(name, lun.name, source, devs,
                          region_size=min(self.config.digest_region, max(source.size, 512)),
                          throttle=Throttle(rs.rate, rs.deadline, rs.slice, source.chunk_size),
                          known_zero=known_zero, on_change=self._pool_changed,
                          on_backups_changed=self._backups_changed)
        if known_zero:
            first = pool.members[0]
            first.sweep, first.state = None, "active"   # both sides are fresh RAM: identical zeros
        for m in pool.members:
            if isinstance(m.device, DeviceQueue):
                self._queues[m.device] = m
        lun.pools.append(pool)
        self._pools.append(pool)
        self._add_path(source, pool, pc.mirror)

    # -- producers -------------------------------------------------------------------------
    def submit(self, lun, op, offset: int = 0, length: int = 0, data=None, flags: int = 0, label=None,
               callback=None, group=None) -> int:
        """Queue one request; ``callback(Completion)`` runs on the owner thread. Returns its seq.

        ``group`` (TRIGGER only): the consistency-group token of a two-phase group TRIGGER
        (``firmware/group.py``). Raises QueueFullError when the ring is full and ShuttingDownError
        once close() began; every other problem completes the request with an error instead.
        """
        if self._closing:
            raise E.ShuttingDownError("the controller is shutting down and takes no new requests")
        err = None
        target = self.luns.get(lun) if type(lun) is str else lun
        if target is None:
            target = self._resolve_target(lun)
            if target is None:
                err = E.NoSuchLunError(f"no LUN named {lun!r}; LUNs: {', '.join(self.luns)}")
        if data is not None and not length:
            length = len(data) if type(data) is bytes else memoryview(data).nbytes
        if not (0 <= offset < _U64 and 0 <= length < _U32):
            err = E.OutOfRangeError(f"offset {offset} or length {length} cannot be addressed",
                                    _errno.ENOSPC if op in (_WRITE, _TRIM, _ZEROES) else _errno.EINVAL)
            offset, length = 0, 0
        if not (0 <= op < 0x10000) or not (0 <= flags < 0x10000):
            err = E.BadRequestError(f"opcode {op} or flags {flags} out of range")
            op, flags = 0xFFFF, 0
        if group is not None:
            data = group   # a TRIGGER carries no data: the slot holds its group token
        cookie = next(self._cookies)
        self._entries[cookie] = (target, data, label, callback, err)
        ring = self._ring
        seq = ring.push(op, flags, offset, length, cookie)
        if seq < 0:
            del self._entries[cookie]
            self.counters["queue_full"] += 1
            raise E.QueueFullError(f"request ring full ({ring.capacity} slots); retry after the controller polls")
        # The owner flags itself idle *before* its last look at the ring (end of poll), and this
        # reads the flag *after* the push: either the owner saw this request or we wake it.
        if self._idle:
            self._idle = False
            wake = self.wakeup
            if wake is not None:
                wake()
        return seq

    def submit_future(self, lun, op, offset: int = 0, length: int = 0, data=None, flags: int = 0, label=None,
                      loop=None):
        """Like submit, but returns an asyncio future of the Completion (awaitable on ``loop``)."""
        import asyncio

        loop = loop or asyncio.get_running_loop()
        fut = loop.create_future()

        def resolve(c):
            if not fut.done():
                fut.set_result(c)
        self.submit(lun, op, offset, length, data, flags, label, lambda c: loop.call_soon_threadsafe(resolve, c))
        return fut

    def _resolve_target(self, name):
        if not isinstance(name, str):
            return None
        base, dot, which = name.rpartition(".")
        lun = self.luns.get(base)
        if lun is None or not dot:
            return None
        if which == "latest":
            return BackupTarget(lun, name, "latest")
        if which.startswith("t") and which[1:].isdigit():
            return BackupTarget(lun, name, int(which[1:]))
        return None

    # -- the controller loop -----------------------------------------------------------------
    def poll(self, max_batch: int = 256) -> int:
        """Drain up to ``max_batch`` requests, execute and complete them, then one background slice.

        Owner thread only. Returns the number of requests completed. After a full batch the owner
        polls again; otherwise the ring is empty or ``wakeup()`` has already been called."""
        if self._in_poll:
            raise RuntimeError("poll() re-entered from a completion callback; callbacks must not block on the controller")
        self._in_poll = True
        try:
            if self._released:
                self._apply_releases()
            if self._late:
                self._deliver_late()
            if max_batch > len(self._batch):
                self._batch = np.zeros(max_batch, dtype=self._dtype)
            batch = self._batch if max_batch == len(self._batch) else self._batch[:max_batch]
            n = self._ring.pop_batch(batch)
            if n and self.store is not None and self._ring.next_seq >= self._seq_limit - SEQ_RESERVE // 2:
                self._reserve_seqs()   # before any of these seqs is executed and so can be reported
            if n:
                self._execute_batch(batch[:n].tolist())
            if self._bg or self._async_paths or self._dirty or self._intents or self._queues:
                self._background(n > 0)
            if self._maps_due:
                self._persist_due_maps()
            if n < max_batch:
                # Either the ring is empty now, or wakeup() has been called: an owner that polls
                # again only when woken (or after a full batch) never strands a request.
                self._idle = True
                if len(self._ring):
                    self._idle = False
                    wake = self.wakeup
                    if wake is not None:
                        wake()
            return n
        finally:
            self._in_poll = False

    def _execute_batch(self, descs) -> None:
        entries = self._entries
        counters = self.counters
        counters["requests"] += len(descs)
        refused = self._declare_intent(descs) if self._intents else None
        for seq, offset, cookie, length, op, flags in descs:
            lun, data, label, cb, err = entries.pop(cookie)
            result = None
            trig = None
            if err is None:
                try:
                    if type(lun) is not Lun:
                        result = self._execute_backup(lun, op, offset, length)
                        if type(result) is _LateRead:
                            self._read_late(result, seq, op, cb)
                            continue
                    elif flags & FLAG_SUB_BLOCK:
                        self._execute_sub_block(lun, op, offset, length, data, flags & ~FLAG_SUB_BLOCK, refused)
                    elif op == _WRITE:
                        check_range(lun, offset, length, True)
                        if lun.read_only:
                            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
                        if flags & ~FLAGS_KNOWN:
                            raise E.BadRequestError(f"unknown flags {flags:#x}")
                        if data is None or (len(data) if type(data) is bytes else memoryview(data).nbytes) != length:
                            raise E.BadRequestError(f"WRITE of {length} bytes needs exactly {length} bytes of data")
                        if refused and lun in refused:
                            raise E.MetadataError(refused[lun])
                        lun.apply(_WRITE, offset, length, data, flags, lun.epoch)
                        counters["writes"] += 1
                        counters["bytes_written"] += length
                    elif op == _READ:
                        check_range(lun, offset, length, False)
                        result = lun.device.read(offset, length)
                        counters["reads"] += 1
                        counters["bytes_read"] += length
                    elif op == _TRIGGER:
                        trig = self._split(lun, seq, label, data)
                    elif op == _FLUSH:
                        lun.flush()
                        counters["flushes"] += 1
                    elif op == _TRIM or op == _ZEROES:
                        check_range(lun, offset, length, True)
                        if lun.read_only:
                            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
                        if refused and lun in refused:
                            raise E.MetadataError(refused[lun])
                        lun.apply(op, offset, length, None, flags, lun.epoch)
                        counters["trims" if op == _TRIM else "zeroes"] += 1
                    elif op == _CACHE:
                        check_range(lun, offset, length, False)
                    else:
                        raise E.BadRequestError(f"unknown opcode {op}; opcodes: "
                                                f"{', '.join(f'{o.name}={o.value}' for o in Op)}")
                except E.ControllerError as exc:
                    err = exc
                except HalError as exc:
                    err = E.DeviceIOError(f"LUN {getattr(lun, 'name', lun)}: {exc}")
            if err is not None:
                counters["errors"] += 1
            if cb is not None:
                if type(lun) is Lun and lun.holds and trig is None:
                    lun.held.append((cb, Completion(seq, op, err, result, trig)))
                    continue
                try:
                    cb(Completion(seq, op, err, result, trig))
                except Exception:   # a producer's callback must not stop the controller
                    counters["callback_errors"] += 1

    def _declare_intent(self, descs) -> dict | None:
        """Before a batch executes: add every chunk it will write, trim or zero to its LUN's durable
        write-intent set, one durable update per LUN whose set grew. Returns {lun: reason} for LUNs
        whose intent could not be made durable: their writes in this batch fail instead of running
        untracked (a crash could otherwise leave a member that looks in sync and is not)."""
        entries = self._entries
        intents = self._intents
        for _seq, offset, cookie, length, op, _flags in descs:
            if op == _WRITE or op == _TRIM or op == _ZEROES:
                lun = entries[cookie][0]
                wi = intents.get(lun) if type(lun) is Lun else None
                if wi is not None and length and offset + length <= lun.size:
                    wi.note(offset, length)
        refused = None
        for lun, wi in list(intents.items()):
            if wi.fresh or wi.failed:
                why = None
                try:
                    if wi.failed:
                        raise OSError(wi.failed)
                    wi.commit()
                    self.counters["intent_writes"] += 1
                except OSError as exc:
                    why = self._intent_broken(lun, f"cannot write the write-intent log of {lun.name}: {exc}")
                if why is not None:
                    refused = refused or {}
                    refused[lun] = why
        return refused

    def _intent_broken(self, lun: Lun, why: str) -> str | None:
        """The write-intent set of ``lun`` cannot be kept durable: remove its epoch maps record, so a
        crash resyncs everything, and stop tracking. Returns why writes must fail when even that fails."""
        self.counters["metadata_errors"] += 1
        self.metadata_error = why
        wi = self._intents[lun]
        try:
            self.store.remove(f"{lun.name}.maps")
        except OSError as exc:
            wi.failed = why
            return f"{why}; and its epoch maps cannot be removed ({exc}): writes are refused until one succeeds"
        del self._intents[lun]
        wi.log.close()
        return None

    def _execute_sub_block(self, lun: Lun, op: int, offset: int, length: int, data, flags: int, refused) -> None:
        """A WRITE, TRIM or WRITE_ZEROES whose range need not be block-aligned (FLAG_SUB_BLOCK).

        Executed here, in its place in the sequence: the partial blocks at either end are read and
        rewritten whole, so a request sequenced just before or after it is never lost. A TRIM only
        trims the whole blocks inside its range (a trim is advisory). What goes down the mirror paths
        is aligned, as always.
        """
        if op not in (_WRITE, _TRIM, _ZEROES):
            raise E.BadRequestError(f"the sub-block flag applies to WRITE, TRIM and WRITE_ZEROES, not opcode {op}")
        check_range(lun, offset, length, True, aligned=False)
        if lun.read_only:
            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
        if flags & ~FLAGS_KNOWN:
            raise E.BadRequestError(f"unknown flags {flags:#x}")
        if op == _WRITE and (data is None or memoryview(data).nbytes != length):
            raise E.BadRequestError(f"WRITE of {length} bytes needs exactly {length} bytes of data")
        if refused and lun in refused:
            raise E.MetadataError(refused[lun])
        bs = lun.block_size
        end = offset + length
        start, stop = offset - offset % bs, -(-end // bs) * bs
        inner0, inner1 = -(-offset // bs) * bs, end - end % bs   # the whole blocks inside the range
        if op == _TRIM:
            if inner0 < inner1:
                lun.apply(_TRIM, inner0, inner1 - inner0, None, flags, lun.epoch)
            self.counters["trims"] += 1
            return
        if op == _WRITE:
            self._write_whole_blocks(lun, start, stop, offset, data, flags)
            self.counters["writes"] += 1
            self.counters["bytes_written"] += length
            return
        if inner0 < inner1:
            lun.apply(_ZEROES, inner0, inner1 - inner0, None, flags, lun.epoch)
            if offset < inner0:
                self._write_whole_blocks(lun, start, inner0, offset, bytes(inner0 - offset), flags)
            if inner1 < end:
                self._write_whole_blocks(lun, inner1, stop, inner1, bytes(end - inner1), flags)
        else:
            self._write_whole_blocks(lun, start, stop, offset, bytes(length), flags)
        self.counters["zeroes"] += 1

    @staticmethod
    def _write_whole_blocks(lun: Lun, start: int, stop: int, offset: int, body, flags: int) -> None:
        """Write ``body`` at ``offset`` as the whole blocks [start, stop): the bytes around it are read first."""
        bs = lun.block_size
        end = offset + memoryview(body).nbytes
        head = tail = b""
        if offset > start:
            first = lun.device.read(start, bs)
            head = first[:offset - start]
            if end < stop and stop - start == bs:
                tail = first[end - start:]
        if end < stop and not tail:
            tail = lun.device.read(stop - bs, bs)[end - (stop - bs):]
        lun.apply(_WRITE, start, stop - start, b"".join((head, body, tail)), flags & FLAG_FUA, lun.epoch)

    def _split(self, lun: Lun, seq: int, label, group=None) -> TriggerResult:
        """TRIGGER dequeued: split in O(1) (the epoch advances), then send it down every path.

        A group TRIGGER whose group has not committed yet makes the LUN hold the completions of
        every later request until it does (invariant 5: acknowledgements, not execution, wait)."""
        raw = label_bytes(label)
        if len(raw) > LABEL_MAX:
            raise E.LabelTooLongError(f"TRIGGER label is {len(raw)} bytes; at most {LABEL_MAX} are allowed")
        if type(group) is GroupToken and not group.committed:
            lun.holds.append(group)
        cut = lun.epoch
        lun.epoch = cut + 1
        tid = lun.next_trigger_id
        lun.next_trigger_id = tid + 1
        text = label_text(raw)
        event = TriggerEvent(lun.name, tid, seq, cut, text, time.time())
        self._wake_background()
        self.counters["triggers"] += 1
        for path in lun.paths:
            path.trigger(event)
        if self.store is not None and not lun.pools:
            self._dirty.setdefault(lun.name, time.monotonic())
        return TriggerResult(tid, seq, cut, text, lun.name)

    def release(self, group) -> None:
        """Any thread: ``group`` has committed; completions held for it are delivered at the next poll."""
        self._released.append(group)
        self._idle = False
        wake = self.wakeup
        if wake is not None:
            wake()

    def _apply_releases(self) -> None:
        released, self._released = self._released, []
        for lun in self.luns.values():
            if not lun.holds:
                continue
            lun.holds = [g for g in lun.holds if not g.committed]
            if lun.holds:
                continue
            held, lun.held = lun.held, []
            for cb, c in held:
                try:
                    cb(c)
                except Exception:
                    self.counters["callback_errors"] += 1
        del released

    def _execute_backup(self, target, op: int, offset: int, length: int):
        if op in (_WRITE, _TRIM, _ZEROES):
            raise E.FrozenMemberError(f"{target.name} is a frozen backup and cannot be written")
        if op == _FLUSH or op == _CACHE:
            return None
        if op != _READ:
            raise E.BadRequestError(f"{target.name} is a backup: only READ, FLUSH and CACHE apply")
        member = self._find_backup(target.lun, target.which)
        lun = target.lun
        check_range(lun, offset, length, False)
        if isinstance(member.device, DeviceQueue):
            return _LateRead(target, member, member.generation, offset, length)
        return member.device.read(offset, length)

    def _read_late(self, late: "_LateRead", seq: int, op: int, cb) -> None:
        """Queue a backup read on its member's DeviceQueue; it completes at a later poll."""
        def done(data, error, late=late, seq=seq, op=op, cb=cb):
            self._late.append((late, seq, op, cb, data, error))
            self._queue_event()
        try:
            late.member.device.read_async(late.offset, late.length, done)
        except HalError as exc:
            done(None, exc)

    def _deliver_late(self) -> None:
        late_q = self._late
        while late_q:
            late, seq, op, cb, data, error = late_q.popleft()
            err = None
            m = late.member
            if error is not None:
                err = E.DeviceIOError(f"{late.target.name}: {error}")
            elif m.generation != late.generation or m.state != FROZEN:
                err = E.NoSuchBackupError(f"{late.target.name} was recycled or demoted while it was read")
                data = None
            if err is not None:
                self.counters["errors"] += 1
            if cb is not None:
                try:
                    cb(Completion(seq, op, err, data if err is None else None, None))
                except Exception:
                    self.counters["callback_errors"] += 1

    # -- background ------------------------------------------------------------------------
    def _background(self, busy: bool) -> None:
        for path in self._async_paths:
            if path.queue:
                path.drain(64 if busy else None)
        gated = False
        for dq, m in self._queues.items():
            exc = dq.failed()
            if exc is not None:
                m.pool.device_failed_member(m, exc)
                self._log_demotions(m.pool)
            if dq.queued_bytes and not dq.write_budget():
                gated = True
        if self._bg:
            now = time.monotonic()
            if now >= self._bg_at:   # throttled work waits for its tokens without costing each poll
                work = 0
                for node in self._nodes:
                    if node.sweep is not None:
                        work += node.sweep_step(node.chunk_size if busy else self.config.resync.slice) or 1
                for pool in self._pools:
                    work += pool.background(busy)
                pending = [p for p in self._pools if p.has_background()]
                if pending or any(n.sweep for n in self._nodes):
                    wait = min((p.throttle.delay() for p in pending), default=0.0)
                    if gated:
                        wait = max(wait, QUEUE_POLL)   # a slice waits for a device queue: no busy polling
                    self._bg_at = now + (wait if work else max(wait, 0.0005))
                else:
                    self._bg = False
        if self._dirty and self.store is not None:
            now = time.monotonic()
            for name, since in list(self._dirty.items()):
                if not busy or now - since > PERSIST_LAG:
                    self._persist(self.luns[name])
        if self._intents:
            now = time.monotonic()
            for lun, wi in list(self._intents.items()):
                t = wi.opened
                if t is not None and (now - t > INTENT_MAX_AGE or (not busy and now - t > INTENT_IDLE_LAG)):
                    self._maps_due.add(lun.name)   # a quiet moment: persisting the maps clears the intent set

    def _wake_background(self) -> None:
        self._bg = True
        self._bg_at = 0.0

    def next_background(self) -> float | None:
        """Seconds until background work wants a poll (0: now), or None when there is none."""
        if any(p.queue for p in self._async_paths) or self._dirty or self._released or self._maps_due or self._late:
            return 0.0
        now = time.monotonic()
        wait = None
        if self._bg:
            wait = max(self._bg_at - now, 0.0)
        for wi in self._intents.values():
            if wi.opened is not None:
                due = max(wi.opened + INTENT_IDLE_LAG - now, 0.0)
                wait = due if wait is None else min(wait, due)
        return wait

    def _log_demotions(self, pool: BackupPool) -> None:
        """Log each member that became inconsistent with a new reason (status shows it too)."""
        for m in pool.members:
            if m.state == INCONSISTENT and m.error and self._demotions.get(m) != m.error:
                self._demotions[m] = m.error
                log.warning("pool %s: member %s (%s) demoted: %s", pool.name, m.name, m.url, m.error)
            elif m.state != INCONSISTENT:
                self._demotions.pop(m, None)

    def _pool_changed(self, pool: BackupPool, urgent: bool) -> None:
        self._log_demotions(pool)
        self._wake_background()
        if self.store is None:
            return
        lun = self.luns[pool.lun_name]
        if urgent:
            self._persist(lun)
            if lun in self._intents:
                self._maps_due.add(lun.name)   # after this batch: the maps of the new epoch clear the intent set
        else:
            self._dirty.setdefault(lun.name, time.monotonic())

    def _backups_changed(self, pool: BackupPool) -> None:
        fn = self.on_backups_changed
        if fn is not None:
            try:
                fn()
            except Exception:
                self.counters["callback_errors"] += 1

    # -- owner thread and blocking conveniences --------------------------------------------------
    def start(self) -> None:
        """Run the controller loop on a thread of its own (the owner thread)."""
        if self._thread is not None:
            return
        self.wakeup = self._event.set
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="splitpoint-controller", daemon=True)
        self._owner = -1
        self._thread.start()

    def _loop(self) -> None:
        self._owner = threading.get_ident()
        ev = self._event
        while not self._stop:
            n = self.poll()
            if n:
                continue
            delay = self.next_background()
            if delay == 0.0:
                continue
            ev.clear()
            if len(self._ring) or self._stop:
                continue
            ev.wait(delay)

    def stop(self) -> None:
        """Stop the owner thread started by start() (requests already queued stay queued)."""
        t = self._thread
        if t is None:
            return
        self._stop = True
        self._event.set()
        t.join()
        self._thread = None
        self._owner = None
        self.wakeup = None

    def claim_owner(self) -> None:
        """Declare the calling thread the owner (a front end's event loop that calls poll() itself)."""
        self._owner = threading.get_ident()

    def _call(self, lun, op, offset=0, length=0, data=None, flags=0, label=None) -> Completion:
        box: list[Completion] = []
        owner = self._owner
        if owner is None or owner == threading.get_ident():
            with self._inline_lock:
                while True:
                    try:
                        self.submit(lun, op, offset, length, data, flags, label, box.append)
                        break
                    except E.QueueFullError:
                        self.poll()
                while not box:
                    self.poll()
        else:
            done = threading.Event()

            def cb(c, box=box, done=done):
                box.append(c)
                done.set()
            while True:
                try:
                    self.submit(lun, op, offset, length, data, flags, label, cb)
                    break
                except E.QueueFullError:
                    time.sleep(0.0005)
            done.wait()
        c = box[0]
        if c.error is not None:
            raise c.error
        return c

    def write(self, lun, offset: int, data, fua: bool = False) -> None:
        self._call(lun, _WRITE, offset, 0, data, FLAG_FUA if fua else 0)

    def read(self, lun, offset: int, length: int) -> bytes:
        return self._call(lun, _READ, offset, length).data

    def flush(self, lun) -> None:
        self._call(lun, _FLUSH)

    def trim(self, lun, offset: int, length: int) -> None:
        self._call(lun, _TRIM, offset, length)

    def write_zeroes(self, lun, offset: int, length: int, flags: int = 0) -> None:
        self._call(lun, _ZEROES, offset, length, None, flags)

    def trigger(self, lun, label=None) -> TriggerResult:
        return self._call(lun, _TRIGGER, label=label).trigger

    def drain(self) -> None:
        """Owner thread (or no owner): complete every queued request and every async mirror op."""
        while len(self._ring):
            self.poll()
        for path in self._async_paths:
            path.drain()

    def settle(self) -> None:
        """Owner thread (or no owner): finish queued requests, mirror queues, resyncs and digests now."""
        with self._inline_lock:
            self.drain()
            while True:
                for node in self._nodes:
                    node.finish_sweep()
                for pool in self._pools:
                    if pool.upstream is not None:
                        pool.upstream.drain()
                    pool.finish()
                if not any(p.has_background() for p in self._pools) and not any(n.sweep for n in self._nodes):
                    break
            for dq in self._queues:
                dq.drain()
            self._bg = False

    # -- reports -----------------------------------------------------------------------------------
    def _lun(self, lun) -> Lun:
        if isinstance(lun, Lun):
            return lun
        got = self.luns.get(lun)
        if got is None:
            raise E.NoSuchLunError(f"no LUN named {lun!r}; LUNs: {', '.join(self.luns)}")
        return got

    def _find_backup(self, lun: Lun, which) -> PoolMember:
        found = [m for pool in lun.pools for m in pool.backups()
                 if which == "latest" or m.manifest.trigger_id == which]
        if found:
            return max(found, key=_newest_first)
        if which == "latest":
            raise E.NoSuchBackupError(f"LUN {lun.name} has no consistent backup yet")
        raise E.NoSuchBackupError(f"LUN {lun.name} has no consistent backup cut by TRIGGER {which} "
                                  f"(never cut, recycled, or still completing)")

    def backups(self, lun) -> list[BackupInfo]:
        """Consistent frozen copies of ``lun``, newest TRIGGER first."""
        lun = self._lun(lun)
        out = [m.backup_info() for pool in lun.pools for m in pool.backups()]
        out.sort(key=lambda b: (b.trigger_id, b.time), reverse=True)
        return out

    def read_backup(self, lun, trigger_id, offset: int, length: int) -> bytes:
        """Bytes of the backup cut by ``trigger_id`` (or "latest")."""
        lun = self._lun(lun)
        member = self._find_backup(lun, trigger_id)
        check_range(lun, offset, length, False)
        gen = member.generation
        data = member.device.read(offset, length)
        if member.generation != gen or member.state != FROZEN:
            raise E.NoSuchBackupError(f"the backup of TRIGGER {trigger_id} was recycled while it was read")
        return data

    def allocation(self, lun, offset: int, length: int) -> list[tuple[int, int, int]]:
        """NBD base:allocation runs over [offset, offset+length): (offset, length, HOLE|ZERO bits)."""
        target = self.luns.get(lun) if isinstance(lun, str) else lun
        if target is None:
            target = self._resolve_target(lun)
            if target is None:
                raise E.NoSuchLunError(f"no LUN named {lun!r}; LUNs: {', '.join(self.luns)}")
        base = target.lun if isinstance(target, BackupTarget) else target
        check_range(base, offset, length, False, aligned=False)
        if isinstance(target, BackupTarget):
            return [(offset, length, 0)]
        return target.allocation(offset, length, STATE_HOLE | STATE_ZERO)

    def verify(self, lun, trigger_id=None, progress=None) -> list[VerifyResult]:
        """Recompute the digest of each consistent backup (or the one named) against its manifest."""
        lun = self._lun(lun)
        members = [self._find_backup(lun, trigger_id)] if trigger_id is not None else \
            [m for pool in lun.pools for m in pool.backups()]
        out = []
        for m in members:
            note = ""
            gen = m.generation
            manifest = m.manifest
            if manifest is None:
                continue
            if manifest.digest is None:
                # a digest taken now would only vouch for whatever the member holds now: nothing to compare
                h = m.hasher
                done = "" if h is None else f" ({100.0 * h.offset / max(h.size, 1):.0f} % hashed)"
                out.append(VerifyResult(manifest.trigger_id, m.name, None, None, None,
                                        note=f"digest pending: still being computed{done}; verify again later",
                                        pending=True))
                continue
            outcome = verify_device(m.device, manifest, progress)
            if m.generation != gen:
                out.append(VerifyResult(manifest.trigger_id, m.name, False, manifest.digest, outcome.actual,
                                        note="recycled while it was verified; verify again"))
                continue
            if not outcome.ok:
                # the bytes are not the ones the manifest vouches for: stop exporting them as a backup
                where = ", ".join(f"[{o}, {o}+{n})" for o, n in outcome.bad_regions[:4]) or "the whole copy"
                m.pool.demote(m, f"verify found a mismatch (digest {outcome.actual:016x}, manifest "
                                 f"{manifest.digest:016x}) in {where}")
                note = (note + "; " if note else "") + "demoted: no longer a consistent backup"
            out.append(VerifyResult(manifest.trigger_id, m.name, outcome.ok, manifest.digest, outcome.actual,
                                    outcome.bad_regions, note))
        return out

    def status(self) -> dict:
        """One JSON-able structure: LUNs, mirror paths, pools and members, queue, counters."""
        now = time.time()
        owner = self._owner
        mine = owner is None or owner == threading.get_ident()   # only the owner acts on a lost medium
        luns = []
        for lun in self.luns.values():
            doc = lun.status()
            doc["pools"] = [p.status(now, check=mine) for p in lun.pools]
            wi = self._intents.get(lun)
            doc["write_intent"] = None if wi is None else wi.status()
            doc["backups"] = [{"trigger_id": b.trigger_id, "label": b.label, "seq": b.seq, "time": b.time,
                               "member": b.member} for b in self.backups(lun)]
            luns.append(doc)
        return {"luns": luns,
                "queue": {"depth": len(self._ring), "capacity": self._ring.capacity, "next_seq": self._ring.next_seq,
                          "async_mirror_ops": sum(len(p) for p in self._async_paths)},
                "counters": dict(self.counters),
                "devices": self._device_status(),
                "kernels": pyx.implementations(),
                "metadata": None if self.store is None else {
                    "dir": self.store.directory, "generation": self.store.generation,
                    "recovered": self.recovered, "recovery": self.recovery, "error": self.metadata_error}}

    def _device_status(self) -> list[dict]:
        """Per device behind a link (a board): the host's retransmission and reconnect counters."""
        queues = {dq.device: dq for dq in self._queues}
        out = []
        for what, url, dev in self._roles:
            link = getattr(dev, "link_status", None)
            if link is not None:
                dq = queues.get(dev)
                out.append({"device": what, "url": url, "link": link(),
                            "queue": None if dq is None else dq.status()})
        return out

    # -- metadata: persist and restore -------------------------------------------------------------
    def _load_seq_limit(self) -> int:
        """The first sequence number of this run: past every one a previous run may have used."""
        if self.store is None:
            return 1
        got = self.store.read_json("seq.limit")
        return 1 if got is None else max(1, int(got[1]["limit"]))

    def _reserve_seqs(self) -> None:
        """Persist a limit SEQ_RESERVE past the next seq: no seq below it is ever handed out twice,
        because the next run starts at the limit, whatever this one used of the reserve."""
        limit = self._ring.next_seq + SEQ_RESERVE
        try:
            self.store.write_json("seq.limit", {"limit": limit})
        except OSError as exc:
            self.counters["metadata_errors"] += 1
            self.metadata_error = f"cannot persist the sequence limit in {self.store.directory}: {exc}"
            return
        self._seq_limit = limit

    def _lun_doc(self, lun: Lun, clean: bool) -> dict:
        def sweep_doc(s: Sweep | None):
            if s is None:
                return None
            return {"since": s.since, "until": s.until, "cursor": s.cursor}

        pools = []
        for pool in lun.pools:
            members = []
            for m in pool.members:
                members.append({"url": m.url, "state": m.state, "since": m.since, "last_active": m.last_active,
                                "generation": m.generation, "proven": m.proven,
                                "manifest": None if m.manifest is None else m.manifest.to_dict(),
                                "sweep": sweep_doc(m.sweep)})
            pools.append({"name": pool.name, "clock": pool.clock, "rotations": pool.rotations,
                          "active": None if pool.active is None else pool.active.index, "members": members})
        node = lun.backup_node
        return {"version": 1, "lun": lun.name, "size": lun.size, "chunk_size": lun.chunk_size,
                "epoch": lun.epoch, "next_trigger_id": lun.next_trigger_id, "clean": clean,
                "backup": None if node is None else {"url": self._url_of(node.device), "epoch": node.epoch,
                                                     "sweep": sweep_doc(node.sweep)},
                "pools": pools}

    def _url_of(self, device) -> str:
        for lc in self.config.luns:
            if lc.backup is not None and self.luns[lc.name].backup_node.device is device:
                return lc.backup.url
        return ""

    def _persist(self, lun: Lun, clean: bool = False) -> None:
        self._dirty.pop(lun.name, None)
        if clean:
            self._persist_maps(lun)
        try:
            self.store.write_json(f"{lun.name}.state", self._lun_doc(lun, clean))
            self.counters["metadata_writes"] += 1
        except OSError as exc:
            self.counters["metadata_errors"] += 1
            self.metadata_error = f"cannot write metadata in {self.store.directory}: {exc}"

    def _persist_due_maps(self) -> None:
        while self._maps_due:
            lun = self.luns[self._maps_due.pop()]
            if lun.name in self._dirty:
                self._persist(lun)      # the state record first: it never claims less than the maps imply
            self._persist_maps(lun)

    def _persist_maps(self, lun: Lun) -> None:
        """Persist the epoch maps and so clear the write-intent set (the new record is the clear).

        Every mirror path is drained and the LUN and its mirrors flushed first, so every member is,
        on its device, as far along as the maps record says."""
        self._maps_due.discard(lun.name)
        wi = self._intents.get(lun)
        try:
            for path in self._async_paths:
                path.drain()
            lun.flush()
            for path in self._async_paths:
                path.drain()   # the FLUSHes the async hops queued
            for dq in self._queues:   # members behind a link: their writes and that FLUSH have run
                if not dq.drain(None if self._closing else QUEUE_SETTLE):
                    return     # not yet: the intent set stays, and the maps are persisted at a later idle moment
        except HalError as exc:
            self.metadata_error = f"flush before persisting the epoch maps of {lun.name} failed: {exc}"
            return             # the intent set stays: a crash resyncs what it names
        blobs = [lun.epochs.to_bytes(), lun.zeros.to_bytes()]
        if lun.backup_node is not None:
            blobs += [lun.backup_node.epochs.to_bytes(), lun.backup_node.zeros.to_bytes()]
        try:
            gen = self.store.write(f"{lun.name}.maps", b"".join(blobs), "maps")
        except OSError as exc:
            self.metadata_error = f"cannot write the epoch maps of {lun.name} in {self.store.directory}: {exc}"
            self.counters["metadata_errors"] += 1
            if wi is not None:
                # the record may or may not have replaced the old one: neither may be trusted any more
                self._intent_broken(lun, self.metadata_error)
            return
        self.counters["maps_writes"] += 1
        if wi is not None:
            wi.cleared(gen)

    def _restore(self) -> None:
        clean = self.store.was_clean()
        self.recovered = "fresh"
        self.recovery = {"mode": "fresh" if not clean else "clean", "luns": {}}
        for lun in self.luns.values():
            got = self.store.read_json(f"{lun.name}.state")
            if got is None:
                continue
            self.recovered = "clean" if clean else "crash"
            self.recovery["mode"] = self.recovered
            _gen, doc = got
            self._check_doc(lun, doc)
            lun_clean = bool(clean and doc.get("clean") and lun.device.persistent)
            rep = {"maps": None, "intent_chunks": None, "members": []}
            self.recovery["luns"][lun.name] = rep
            maps_gen = None
            if lun.device.persistent:
                try:
                    maps_gen = self._load_maps(lun)
                except E.MetadataError as exc:
                    rep["maps"] = str(exc)
                    lun_clean = False
            lun.next_trigger_id = int(doc["next_trigger_id"])
            intent = None
            wi = self._intents.get(lun)
            if lun_clean:
                lun.epoch = int(doc["epoch"])
                rep["maps"] = "restored (clean close)"
            elif maps_gen is not None and wi is not None:
                # the maps record plus the chunks intended since it bound every chunk's epoch from above
                raw = wi.log.read(maps_gen)
                intent = pyx.select("epochmap").ChunkBitmap(lun.size, lun.chunk_size)
                if raw is not None:
                    intent = pyx.select("epochmap").ChunkBitmap.from_bytes(lun.size, lun.chunk_size, raw)
                newest = int(np.frombuffer(lun.epochs.to_bytes(), dtype=np.uint32).max(initial=0))
                lun.epoch = max(int(doc["epoch"]), newest) + 1
                for off, ln in intent.extents():
                    lun.epochs.mark(off, ln, lun.epoch)   # written in the newest epoch, as far as anyone knows
                    lun.zeros.clear_range(off, ln)
                lun.zeros_restored()
                rep["maps"] = "restored, with the write-intent set merged"
                rep["intent_chunks"] = intent.count()
            else:
                lun.epoch = int(doc["epoch"]) + 1
                # without trusted maps a crash may have hidden any write: every incremental resync becomes full
                lun.zeros.clear()
                lun.zeros_restored()
                if rep["maps"] is None:
                    rep["maps"] = "no epoch maps record" if maps_gen is None else "no write-intent log"
            node = lun.backup_node
            if node is not None:
                node.epoch = lun.epoch
                bdoc = doc.get("backup") or {}
                s = bdoc.get("sweep")
                if lun_clean and node.device.persistent:
                    node.sweep = None if s is None else Sweep(lun.epochs, s["since"], cursor=s["cursor"])
                else:
                    node.start_sweep(0)
            for pool, pdoc in zip(lun.pools, doc["pools"]):
                self._restore_pool(pool, pdoc, lun_clean and pool.source.device.persistent,
                                   intent if pool.source is lun else None, rep["members"])
        for lun in self.luns.values():
            self._persist(lun)
            if lun in self._intents:
                self._persist_maps(lun)    # after the state record: the intent set starts empty against it
        self.store.mark_running()

    def _check_doc(self, lun: Lun, doc: dict) -> None:
        where = f"metadata of LUN {lun.name} in {self.store.directory}"
        if doc.get("version") != 1:
            raise E.MetadataError(f"{where} has version {doc.get('version')}; expected 1")
        if doc.get("size") != lun.size or doc.get("chunk_size") != lun.chunk_size:
            raise E.MetadataError(f"{where} describes {doc.get('size')} bytes in chunks of {doc.get('chunk_size')}, "
                                  f"but the LUN is {lun.size} bytes in chunks of {lun.chunk_size}: "
                                  f"move the metadata directory away to start afresh")
        pools = doc.get("pools", [])
        if len(pools) != len(lun.pools) or any(
                [m["url"] for m in p["members"]] != [m.url for m in pool.members]
                for p, pool in zip(pools, lun.pools)):
            raise E.MetadataError(f"{where} lists other pools or members than the configuration: "
                                  f"move the metadata directory away to start afresh")

    def _load_maps(self, lun: Lun) -> int:
        """Load the epoch and known-zero maps of ``lun`` (and its primary backup LUN); their generation."""
        got = self.store.read(f"{lun.name}.maps")
        if got is None:
            raise E.MetadataError(f"no epoch maps record for {lun.name}")
        gen, body = got
        em = pyx.select("epochmap")
        ne = len(lun.epochs) * 4
        nb = len(lun.zeros.to_bytes())
        parts = [lun]
        if lun.backup_node is not None:
            parts.append(lun.backup_node)
        if len(body) != (ne + nb) * len(parts):
            raise E.MetadataError(f"epoch maps of {lun.name} have the wrong length")
        pos = 0
        for node in parts:
            node.epochs = em.EpochMap.from_bytes(node.size, node.chunk_size, body[pos:pos + ne])
            pos += ne
            node.zeros = em.ChunkBitmap.from_bytes(node.size, node.chunk_size, body[pos:pos + nb])
            pos += nb
            node.zeros_restored()
        for pool in lun.pools:
            for m in pool.members:
                if m.sweep is not None:
                    m.sweep.epochs = pool.source.epochs
        return gen

    def _restore_pool(self, pool: BackupPool, pdoc: dict, clean: bool, intent=None, report=None) -> None:
        """Restore one pool's members. After a crash, ``intent`` (the write-intent set, already merged
        into the source's epoch map) means the epoch map bounds what changed: proven backups keep
        their ``since`` and the active member resyncs only the intent chunks and what it still had
        pending. Without it every resync is in full."""
        pool.clock = int(pdoc["clock"])
        pool.rotations = int(pdoc["rotations"])
        pool.active = None
        pool.source.cow = [m for m in pool.source.cow if m.pool is not pool]
        epochs = pool.source.epochs
        incremental = intent is not None
        for m, md in zip(pool.members, pdoc["members"]):
            m.last_active = int(md["last_active"])
            m.generation = int(md["generation"]) + 1
            m.manifest = None if md["manifest"] is None else Manifest.from_dict(md["manifest"])
            m.sweep = None
            m.hasher = None
            m.error = None
            state = md["state"]
            keeps_bytes = m.device.persistent
            if not keeps_bytes:
                m.state, m.since, m.manifest, m.proven = EMPTY, 0, None, False
            elif clean:
                m.state, m.since, m.proven = state, int(md["since"]), bool(md["proven"])
                s = md["sweep"]
                if s is not None:
                    m.sweep = Sweep(epochs, int(s["since"]), deadline=pool.throttle.deadline,
                                    cursor=int(s["cursor"]), until=s["until"])
                if state == CUTTING:
                    pool.source.cow.append(m)
            elif state == FROZEN and md["proven"] and m.manifest is not None:
                # flushed before its manifest was recorded: a backup (its digest may still be pending);
                # with trusted maps its next resync is still incremental
                m.state, m.since, m.proven = FROZEN, int(md["since"]) if incremental else 0, True
            else:
                m.state, m.since, m.manifest, m.proven = INCONSISTENT, 0, None, False
                m.error = "not proven consistent before an unclean shutdown"
            if m.state == FROZEN and m.manifest is not None and m.manifest.digest is None:
                m.hasher = RegionHasher(m.device, pool.region_size, pool.size)   # the digest still to compute
        idx = pdoc["active"]
        why = {}
        if idx is not None:
            m = pool.members[idx]
            md = pdoc["members"][idx]
            if clean and keeps(m) and m.state in ("active", SYNCING):
                pool.active = m
            elif incremental and keeps(m) and (md["state"] == "active" or
                                               (md["state"] == SYNCING and md["sweep"] is not None)):
                self._resume_after_crash(pool, m, md, intent)
                why[m.index] = ("in sync at the last persist: only the write-intent chunks"
                                if md["state"] == "active" else
                                "was resyncing: its pending chunks and the write-intent chunks")
            else:
                m.state = INCONSISTENT
                pool.activate(m, notify=False)
                why[m.index] = ("the epoch maps cannot be trusted: full resync" if not incremental and not clean
                                else "contents unknown: full resync")
        elif not clean and len(pool.members) > 1:
            nxt = min(pool.members, key=lambda x: (x.last_active, x.index))
            pool.activate(nxt, notify=False)
            why[nxt.index] = "reactivated after the crash"
        if report is not None and not clean:
            for m, md in zip(pool.members, pdoc["members"]):
                entry = {"member": m.name, "was": md["state"], "state": m.state}
                if m.sweep is not None:
                    entry["resync_chunks"] = _pending_chunks(m.sweep)
                    entry["why"] = why.get(m.index, "")
                elif m.state == FROZEN:
                    entry["why"] = "proven before the crash: still a backup"
                elif m.error:
                    entry["why"] = m.error
                report.append(entry)
        self._bg = True

    def _resume_after_crash(self, pool: BackupPool, m: PoolMember, md: dict, intent) -> None:
        """The active member at the crash: it differs from the source at most in the chunks the
        intent set names and, if it was resyncing, in what its sweep had not reached."""
        epochs = pool.source.epochs
        m.manifest, m.proven, m.error = None, False, None
        if md["state"] == "active":
            # the intent chunks, and only they, carry the new epoch
            since, cursor = pool.source.epoch, 0
        else:
            s = md["sweep"]
            since, cursor = int(s["since"]), int(s["cursor"])
            first = intent.next_set(0)
            if 0 <= first < cursor:
                cursor = first   # intent chunks behind the cursor: rescan from the first (a superset)
        m.sweep = Sweep(epochs, since, deadline=pool.throttle.deadline, cursor=cursor)
        m.since = since
        m.state = SYNCING
        pool.active = m

    # -- shutdown ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Drain the queue and the mirror paths, persist metadata (clean shutdown), release devices."""
        if self._closed:
            return
        self._closing = True
        self.stop()
        with self._inline_lock:
            self.drain()
            for lun in self.luns.values():   # a group that never committed: deliver what it held
                for g in lun.holds:
                    g.committed = True
                self._released.append(None)
            self._apply_releases()
            if self.store is not None:
                for lun in self.luns.values():
                    try:
                        lun.flush()
                        for node in [lun.backup_node] if lun.backup_node else []:
                            node.device.flush()
                        for pool in lun.pools:
                            pool.flush_members()
                    except HalError as exc:
                        self.metadata_error = f"flush at close failed: {exc}"
                    self._persist(lun, clean=True)
                if self.metadata_error is None:
                    self.store.mark_clean()
        self._closed = True
        self._close_devices()

    def _close_devices(self) -> None:
        for wi in self._intents.values():
            wi.log.close()
        for dev in self._devices:
            try:
                dev.close()
            except Exception:
                pass
        self._devices = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _newest_first(m: PoolMember) -> tuple:
    """The order of "newest cut": TRIGGER ids grow per LUN across restarts (sequence numbers once did not)."""
    return (m.manifest.trigger_id, m.manifest.time)


def keeps(m: PoolMember) -> bool:
    return m.device.persistent


def _pending_chunks(sweep: Sweep) -> int:
    """Chunks a sweep still has to copy."""
    cs = sweep.chunk_size
    return sum(-(-ln // cs) for _off, ln in sweep.pending(sweep.cursor, sweep.nchunks))
