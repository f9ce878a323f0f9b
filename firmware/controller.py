"""The controller: one sequenced request ring, executed in order on the primary and mirrored.

Owns the request ring and the table of payloads and completions keyed by
cookie, the controller loop (``poll``: drain a batch, execute each request on
its primary LUN through the opcode table, forward it down the mirror paths,
complete it; then a bounded slice of background work), the TRIGGER split (O(1):
the epoch advances and the TRIGGER follows the earlier writes down every path),
completions held for a consistency group, and shutdown. Around it:
``topology.py`` builds the LUNs, cascades and pools from the configuration;
``recovery.py`` decides what is persisted when and what a restart may trust;
``lunops.py`` holds the opcode table's handlers on a LUN (READ and WRITE on
a LUN of memory devices skip them for the ``memlun`` kernel, one call each);
``backups.py`` serves requests on frozen backups; ``reports.py`` the listings,
verify and status; ``calls.py`` the owner thread and blocking calls.

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
from splitpoint.firmware.calls import BlockingCalls
from splitpoint.firmware.group import ConfiguredGroup, GroupToken
from splitpoint.firmware.lun import Lun
from splitpoint.firmware.lunops import LunRequests
from splitpoint.firmware.metadata import MetadataStore
from splitpoint.firmware.pool import INCONSISTENT, BackupPool
from splitpoint.firmware.recovery import Recovery
from splitpoint.firmware.backups import BackupRequests, LateRead
from splitpoint.firmware.reports import Reports
from splitpoint.firmware.retention import BackupRetention, check_trigger
from splitpoint.firmware.changes import ChangedBlocks
from splitpoint.firmware.restore import Restores
from splitpoint.firmware.requests import (FLAG_SUB_BLOCK, Completion, Op, TriggerResult, label_bytes,
                                          label_text)
from splitpoint.firmware.topology import Topology
from splitpoint.firmware.triggers import LABEL_MAX, TriggerEvent
from splitpoint.hal import HalError

_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_TRIM = int(Op.TRIM)
_ZEROES = int(Op.WRITE_ZEROES)
_U64 = 1 << 64
_U32 = 1 << 32

log = logging.getLogger("splitpoint.controller")

#: seconds between background polls while every background slice waits for a device queue to drain
QUEUE_POLL = 0.005


def untagged(cb):
    """A tagged callback ``(fn, a, b)`` as a ``callback(Completion)``."""
    fn, a, b = cb
    return lambda c: fn(a, b, c.error, c.data)


class Controller(BlockingCalls, LunRequests, BackupRequests, Reports, BackupRetention, ChangedBlocks,
                 Restores):
    """The controller of one device: its LUNs, their mirror paths and backup pools."""

    def __init__(self, config):
        self.config = config
        self.counters = {"requests": 0, "reads": 0, "writes": 0, "trims": 0, "zeroes": 0, "flushes": 0,
                         "triggers": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0,
                         "callback_errors": 0, "queue_full": 0, "metadata_writes": 0, "metadata_errors": 0,
                         "intent_writes": 0, "maps_writes": 0}
        # the metadata first: the ring continues the sequence numbers of the previous run
        self.metadata: Recovery | None = None
        if config.metadata_dir:
            self.metadata = Recovery(MetadataStore(config.metadata_dir), self.counters)
        ring_mod = pyx.select("ring")
        self._ring = ring_mod.MPSCRing(config.ring_capacity,
                                       first_seq=1 if self.metadata is None else self.metadata.seq_limit)
        self._dtype = ring_mod.DESC_DTYPE
        if tuple(self._dtype.names) != ("seq", "offset", "cookie", "length", "op", "flags"):
            raise RuntimeError(f"ring descriptor fields {self._dtype.names} are not the documented layout")
        self._batch = np.zeros(256, dtype=self._dtype)
        self._entries: dict[int, tuple] = {}
        self._cookies = itertools.count(1)
        self.topology = Topology(config, queue_event=self._wake_owner, pool_changed=self._pool_changed,
                                 backups_changed=self._backups_changed, node_behind=self._wake_background)
        topo = self.topology
        self.luns: dict[str, Lun] = topo.luns      # the loop walks the topology's own lists
        self._pools = topo.pools
        self._nodes = topo.nodes
        self._async_paths = topo.async_paths
        self._queues = topo.queues
        self._late: collections.deque = collections.deque()   # completions of reads a DeviceQueue ran
        self._demotions: dict = {}                # PoolMember -> the error last logged for it
        self.retention_warnings: dict = {}        # LUN name -> the warning of its last TRIGGER that left no backup
        self.wakeup = None                        # called from any thread by a submit while the owner may be idle
        self.on_backups_changed = None            # called on the owner thread when a backup appears or goes
        self.status_sources: dict = {}            # name -> callable: more of status() (device links)
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
        self._opcode_tables()
        meta = self.metadata
        try:
            if meta is not None:
                meta.reserve_seqs(self._ring.next_seq)
            topo.build()
            if meta is not None:
                meta.attach(self.luns, self._async_paths, self._queues)
                meta.restore()
                self.resume_restores()
                self._wake_background()
            #: configured consistency groups of these LUNs, by name (``TRIGGER ON <group>``)
            self.groups: dict[str, ConfiguredGroup] = {
                g.name: ConfiguredGroup(g.name, [self.luns[n] for n in g.luns], None if meta is None else meta.store)
                for g in getattr(config, "groups", ())}
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

    # -- producers -------------------------------------------------------------------------
    def ring_room(self) -> int:
        """Free slots in the request ring now (another producer may take some before you push)."""
        return self._ring.capacity - len(self._ring)

    def submit(self, lun, op, offset: int = 0, length: int = 0, data=None, flags: int = 0, label=None,
               callback=None, group=None) -> int:
        """Queue one request; ``callback(Completion)`` runs on the owner thread. Returns its seq.

        ``callback`` may instead be a tagged callback ``(fn, a, b)``: ``fn(a, b, error, data)`` is
        called, with no Completion built on the memory path (``data``: a READ's bytes, else None).

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
            meta = self.metadata
            if n and meta is not None and meta.seqs_running_out(self._ring.next_seq):
                meta.reserve_seqs(self._ring.next_seq)   # before any of these seqs is executed and so can be reported
            if n:
                self._execute_batch(batch[:n].tolist())
            if self._bg or self._async_paths or self._queues or (meta is not None and (meta.dirty or meta.intents)):
                self._background(n > 0)
            if meta is not None and meta.maps_due:
                meta.persist_due_maps()
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
        meta = self.metadata
        refused = None
        if meta is not None and meta.intents:
            refused = meta.declare_intent([(entries[cookie][0], offset, length)
                                           for _seq, offset, cookie, length, op, _flags in descs
                                           if (op == _WRITE or op == _TRIM or op == _ZEROES)
                                           and type(entries[cookie][0]) is Lun])
        # READ and WRITE (without flags: FUA goes through the devices' write()) on a LUN of memory
        # devices run in the memlun kernel: one call each, the same bytes, marks and errors (a
        # request it cannot serve takes the general path). A LUN's memory path holds until a
        # request takes the general path (a TRIGGER rotates the pool).
        mem_lun = mem = None
        fast = refused is None
        writes = written = reads = read_bytes = 0
        try:
            for seq, offset, cookie, length, op, flags in descs:
                lun, data, label, cb, err = entries.pop(cookie)
                if fast and (op == _WRITE or op == _READ) and not flags and err is None and type(lun) is Lun:
                    if lun is not mem_lun:
                        mem_lun, mem = lun, lun.memory_path()
                    if mem is not None:
                        if op == _WRITE:
                            result = None
                            done = mem.write(offset, length, data, lun.epoch)
                            if done:
                                writes += 1
                                written += length
                        else:
                            result = mem.read(offset, length)
                            done = result is not None
                            if done:
                                reads += 1
                                read_bytes += length
                        if done:
                            if cb is not None:
                                if lun.holds:
                                    lun.held.append((untagged(cb) if type(cb) is tuple else cb,
                                                     Completion(seq, op, None, result, None)))
                                    continue
                                try:
                                    if type(cb) is tuple:
                                        fn, tag, tag2 = cb
                                        fn(tag, tag2, None, result)
                                    else:
                                        cb(Completion(seq, op, None, result, None))
                                except Exception:   # a producer's callback must not stop the controller
                                    counters["callback_errors"] += 1
                            continue
                mem_lun = None
                self._execute_one(lun, data, label, cb, err, seq, offset, cookie, length, op, flags, refused)
        finally:
            if writes or reads:
                counters["writes"] += writes
                counters["bytes_written"] += written
                counters["reads"] += reads
                counters["bytes_read"] += read_bytes

    def _execute_one(self, lun, data, label, cb, err, seq, offset, cookie, length, op, flags, refused) -> None:
        """One request through the opcode table, completed (or held, or left to a DeviceQueue)."""
        counters = self.counters
        result = None
        trig = None
        if type(cb) is tuple:
            cb = untagged(cb)
        if err is None:
            try:
                if type(lun) is Lun:
                    try:
                        handler = (self._sub_block_ops if flags & FLAG_SUB_BLOCK else self._lun_ops)[op]
                    except KeyError:
                        handler = self._unknown_op
                    result = handler(lun, seq, op, offset, length, data, flags, label, refused)
                    if type(result) is TriggerResult:
                        trig, result = result, None
                else:
                    result = self._backup_ops.get(op, self._not_for_backup)(lun, op, offset, length)
                    if type(result) is LateRead:
                        self._read_late(result, seq, op, cb)
                        return
            except E.ControllerError as exc:
                err = exc
            except HalError as exc:
                err = E.DeviceIOError(f"LUN {getattr(lun, 'name', lun)}: {exc}")
        if err is not None:
            counters["errors"] += 1
        if cb is not None:
            if type(lun) is Lun and lun.holds and trig is None:
                lun.held.append((cb, Completion(seq, op, err, result, trig)))
                return
            try:
                cb(Completion(seq, op, err, result, trig))
            except Exception:   # a producer's callback must not stop the controller
                counters["callback_errors"] += 1

    def _split(self, lun: Lun, seq: int, label, group=None) -> TriggerResult:
        """TRIGGER dequeued: split in O(1) (the epoch advances), then send it down every path.

        A group TRIGGER whose group has not committed yet makes the LUN hold the completions of
        every later request until it does (invariant 5: acknowledgements, not execution, wait)."""
        raw = label_bytes(label)
        if len(raw) > LABEL_MAX:
            raise E.LabelTooLongError(f"TRIGGER label is {len(raw)} bytes; at most {LABEL_MAX} are allowed")
        warning = check_trigger(lun) if lun.pools else None   # pins and last copies: refused before the cut
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
        if self.metadata is not None and not lun.pools:
            self.metadata.mark_dirty(lun)
        if warning is not None or lun.name in self.retention_warnings:
            self._retention_warning(lun, tid, warning)
        return TriggerResult(tid, seq, cut, text, lun.name, warning)

    def release(self, group) -> None:
        """Any thread: ``group`` has committed; completions held for it are delivered at the next poll."""
        self._released.append(group)
        self._wake_owner()

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

    def _wake_owner(self) -> None:
        """Any thread: the owner has work at its next poll (a group committed; a DeviceQueue finished a
        read or failed an op)."""
        self._idle = False
        wake = self.wakeup
        if wake is not None:
            wake()

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
        if self.metadata is not None:
            self.metadata.background(busy)

    def _wake_background(self) -> None:
        self._bg = True
        self._bg_at = 0.0

    def next_background(self) -> float | None:
        """Seconds until background work wants a poll (0: now), or None when there is none."""
        if any(p.queue for p in self._async_paths) or self._released or self._late:
            return 0.0
        wait = None
        if self._bg:
            wait = max(self._bg_at - time.monotonic(), 0.0)
        if self.metadata is not None:
            due = self.metadata.next_due()
            if due is not None:
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
        if self.metadata is not None:
            self.metadata.pool_changed(self.luns[pool.lun_name], urgent)

    def _backups_changed(self, pool: BackupPool) -> None:
        fn = self.on_backups_changed
        if fn is not None:
            try:
                fn()
            except Exception:
                self.counters["callback_errors"] += 1

    # -- shutdown ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Drain the queue and the mirror paths, persist metadata (clean shutdown), release devices."""
        if self._closed:
            return
        self._closing = True
        if self.metadata is not None:
            self.metadata.closing = True   # from now on the epoch maps wait for every device queue
        self.stop()
        with self._inline_lock:
            self.drain()
            for lun in self.luns.values():   # a group that never committed: deliver what it held
                for g in lun.holds:
                    g.committed = True
                self._released.append(None)
            self._apply_releases()
            if self.metadata is not None:
                self.metadata.close_clean()
        self._closed = True
        self._close_devices()

    def _close_devices(self) -> None:
        if self.metadata is not None:
            self.metadata.close_logs()
        self.topology.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
