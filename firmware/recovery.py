"""Recovery: the controller's metadata, persisted as it changes and read back at a restart.

Owns the records a controller keeps in its metadata store (``firmware/metadata.py``
owns their on-disk format and atomic replacement): the sequence limit, one state
record per LUN (``<lun>.state``: the LUN's place in the stream, its primary
backup LUN's, and each pool's own record), the epoch maps (``<lun>.maps``) and
the write-intent log of every persistent primary (``<lun>.intent``). It decides
when each is written (at once for a rotation, lazily for progress, the maps at
an idle moment, which clears the intent set) and, at a restart, what of them may
be trusted after a clean close or a crash. The LUNs and pools save and restore
their own state; this module puts the pieces together.

It never executes a request and never changes a pool member's state itself: the
pool does that from its record (``BackupPool.restore_state``).
"""
from __future__ import annotations

import time

from splitpoint import pyx
from splitpoint.firmware import errors as E
from splitpoint.firmware.intent import WriteIntent
from splitpoint.firmware.lun import Lun
from splitpoint.firmware.metadata import IntentLog, MetadataStore
from splitpoint.hal import HalError

#: the version of a LUN's state record
STATE_VERSION = 1
#: sequence numbers reserved per persisted limit (a restart skips what was left of the reserve)
SEQ_RESERVE = 1 << 20
#: seconds the loop waits for the device queues of pool members before persisting the epoch maps (else later)
QUEUE_SETTLE = 0.2
#: seconds a lazily persisted state change may wait for an idle moment
PERSIST_LAG = 0.5
#: seconds a write-intent set waits for an idle moment before the epoch maps are persisted (clearing it)
INTENT_IDLE_LAG = 0.5
#: ... and at most, under continuous load, so a crash never has to resync more than this much writing
INTENT_MAX_AGE = 5.0


class Recovery:
    """The metadata of one controller's LUNs in one store: what is persisted when, and the restart."""

    def __init__(self, store: MetadataStore, counters: dict):
        self.store = store
        self.counters = counters               # the controller's counters (metadata_writes, ...)
        self.error: str | None = None          # the last metadata problem, for status
        self.recovered: str | None = None      # "fresh", "clean" or "crash" once restore() ran
        self.report: dict | None = None        # what the restart resynced and why
        self.closing = False                   # a clean close: the epoch maps wait for every device queue
        self.luns: dict[str, Lun] = {}
        self.intents: dict[Lun, WriteIntent] = {}   # persistent writable primaries
        self.dirty: dict[str, float] = {}      # LUN -> when its state first changed since the last persist
        self.maps_due: set[str] = set()        # LUN names whose epoch maps are persisted after this batch
        self._async_paths: list = []
        self._queues: dict = {}
        got = store.read_json("seq.limit")
        #: the first sequence number of this run: past every one a previous run may have used
        self.seq_limit = 1 if got is None else max(1, int(got[1]["limit"]))

    def attach(self, luns: dict[str, Lun], async_paths: list, queues: dict) -> None:
        """The LUNs built from the configuration; every persistent writable one gets its write-intent log."""
        self.luns = luns
        self._async_paths = async_paths
        self._queues = queues
        for lun in luns.values():
            if lun.persistent and not lun.read_only:
                log = IntentLog(self.store.path(f"{lun.name}.intent"), len(lun.zeros.to_bytes()))
                self.intents[lun] = WriteIntent(lun, log)

    # -- the sequence limit ----------------------------------------------------------------------
    def seqs_running_out(self, next_seq: int) -> bool:
        return next_seq >= self.seq_limit - SEQ_RESERVE // 2

    def reserve_seqs(self, next_seq: int) -> None:
        """Persist a limit SEQ_RESERVE past ``next_seq``: no seq below it is ever handed out twice,
        because the next run starts at the limit, whatever this one used of the reserve."""
        limit = next_seq + SEQ_RESERVE
        try:
            self.store.write_json("seq.limit", {"limit": limit})
        except OSError as exc:
            self.counters["metadata_errors"] += 1
            self.error = f"cannot persist the sequence limit in {self.store.directory}: {exc}"
            return
        self.seq_limit = limit

    # -- the write-intent set --------------------------------------------------------------------
    def declare_intent(self, writes) -> dict | None:
        """Before a batch executes: add every (lun, offset, length) it will write, trim or zero to its
        LUN's durable write-intent set, one durable update per LUN whose set grew. Returns {lun: reason}
        for LUNs whose intent could not be made durable: their writes in this batch fail instead of
        running untracked (a crash could otherwise leave a member that looks in sync and is not)."""
        intents = self.intents
        for lun, offset, length in writes:
            wi = intents.get(lun)
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
        self.error = why
        wi = self.intents[lun]
        try:
            self.store.remove(f"{lun.name}.maps")
        except OSError as exc:
            wi.failed = why
            return f"{why}; and its epoch maps cannot be removed ({exc}): writes are refused until one succeeds"
        del self.intents[lun]
        wi.log.close()
        return None

    # -- when state is persisted -------------------------------------------------------------------
    def mark_dirty(self, lun: Lun) -> None:
        """``lun``'s state changed in a way that may be persisted at the next idle moment."""
        self.dirty.setdefault(lun.name, time.monotonic())

    def pool_changed(self, lun: Lun, urgent: bool) -> None:
        """A pool of ``lun`` changed; ``urgent`` (a rotation, a cut, a demotion) is persisted now."""
        if urgent:
            self.persist(lun)
            if lun in self.intents:
                self.maps_due.add(lun.name)   # after this batch: the maps of the new epoch clear the intent set
        else:
            self.mark_dirty(lun)

    def background(self, busy: bool) -> None:
        """Persist what waited long enough (or now that the loop is idle); age the intent sets."""
        now = time.monotonic()
        for name, since in list(self.dirty.items()):
            if not busy or now - since > PERSIST_LAG:
                self.persist(self.luns[name])
        for lun, wi in list(self.intents.items()):
            t = wi.opened
            if t is not None and (now - t > INTENT_MAX_AGE or (not busy and now - t > INTENT_IDLE_LAG)):
                self.maps_due.add(lun.name)   # a quiet moment: persisting the maps clears the intent set

    def next_due(self) -> float | None:
        """Seconds until something here wants a poll (0: now), or None."""
        if self.dirty or self.maps_due:
            return 0.0
        now = time.monotonic()
        wait = None
        for wi in self.intents.values():
            if wi.opened is not None:
                due = max(wi.opened + INTENT_IDLE_LAG - now, 0.0)
                wait = due if wait is None else min(wait, due)
        return wait

    # -- writing records ---------------------------------------------------------------------------
    def _record(self, lun: Lun, clean: bool) -> dict:
        node = lun.backup_node
        return {"version": STATE_VERSION, **lun.save_state(), "clean": clean,
                "backup": None if node is None else node.save_target_state(),
                "pools": [pool.save_state() for pool in lun.pools]}

    def persist(self, lun: Lun, clean: bool = False) -> None:
        self.dirty.pop(lun.name, None)
        if clean:
            self.persist_maps(lun)
        try:
            self.store.write_json(f"{lun.name}.state", self._record(lun, clean))
            self.counters["metadata_writes"] += 1
        except OSError as exc:
            self.counters["metadata_errors"] += 1
            self.error = f"cannot write metadata in {self.store.directory}: {exc}"

    def persist_due_maps(self) -> None:
        while self.maps_due:
            lun = self.luns[self.maps_due.pop()]
            if lun.name in self.dirty:
                self.persist(lun)      # the state record first: it never claims less than the maps imply
            self.persist_maps(lun)

    def persist_maps(self, lun: Lun) -> None:
        """Persist the epoch maps and so clear the write-intent set (the new record is the clear).

        Every mirror path is drained and the LUN and its mirrors flushed first, so every member is,
        on its device, as far along as the maps record says."""
        self.maps_due.discard(lun.name)
        wi = self.intents.get(lun)
        try:
            for path in self._async_paths:
                path.drain()
            lun.flush()
            for path in self._async_paths:
                path.drain()   # the FLUSHes the async hops queued
            for dq in self._queues:   # members behind a link: their writes and that FLUSH have run
                if not dq.drain(None if self.closing else QUEUE_SETTLE):
                    return     # not yet: the intent set stays, and the maps are persisted at a later idle moment
        except HalError as exc:
            self.error = f"flush before persisting the epoch maps of {lun.name} failed: {exc}"
            return             # the intent set stays: a crash resyncs what it names
        blobs = lun.maps()
        if lun.backup_node is not None:
            blobs += lun.backup_node.maps()
        try:
            gen = self.store.write(f"{lun.name}.maps", b"".join(blobs), "maps")
        except OSError as exc:
            self.error = f"cannot write the epoch maps of {lun.name} in {self.store.directory}: {exc}"
            self.counters["metadata_errors"] += 1
            if wi is not None:
                # the record may or may not have replaced the old one: neither may be trusted any more
                self._intent_broken(lun, self.error)
            return
        self.counters["maps_writes"] += 1
        if wi is not None:
            wi.cleared(gen)

    def close_clean(self) -> None:
        """A clean close: flush every device, persist every LUN as clean, then set the clean flag."""
        self.closing = True
        for lun in self.luns.values():
            try:
                lun.flush_all()
            except HalError as exc:
                self.error = f"flush at close failed: {exc}"
            self.persist(lun, clean=True)
        if self.error is None:
            self.store.mark_clean()

    def close_logs(self) -> None:
        for wi in self.intents.values():
            wi.log.close()

    # -- the restart -------------------------------------------------------------------------------
    def restore(self) -> None:
        """Read back every LUN's record and decide, per LUN and member, what survived the shutdown."""
        clean = self.store.was_clean()
        self.recovered = "fresh"
        self.report = {"mode": "fresh" if not clean else "clean", "luns": {}}
        for lun in self.luns.values():
            got = self.store.read_json(f"{lun.name}.state")
            if got is None:
                continue
            self.recovered = "clean" if clean else "crash"
            self.report["mode"] = self.recovered
            _gen, doc = got
            self._check_record(lun, doc)
            rep = {"maps": None, "intent_chunks": None, "members": []}
            self.report["luns"][lun.name] = rep
            self._restore_lun(lun, doc, clean, rep)
        for lun in self.luns.values():
            self.persist(lun)
            if lun in self.intents:
                self.persist_maps(lun)    # after the state record: the intent set starts empty against it
        self.store.mark_running()

    def _restore_lun(self, lun: Lun, doc: dict, clean: bool, rep: dict) -> None:
        lun_clean = bool(clean and doc.get("clean") and lun.persistent)
        maps_gen = None
        if lun.persistent:
            try:
                maps_gen = self._load_maps(lun)
            except E.MetadataError as exc:
                rep["maps"] = str(exc)
                lun_clean = False
        intent = None
        wi = self.intents.get(lun)
        if lun_clean:
            lun.restore_state(doc, int(doc["epoch"]))
            rep["maps"] = "restored (clean close)"
        elif maps_gen is not None and wi is not None:
            # the maps record plus the chunks intended since it bound every chunk's epoch from above
            raw = wi.log.read(maps_gen)
            bitmap = pyx.select("epochmap").ChunkBitmap
            intent = bitmap(lun.size, lun.chunk_size) if raw is None else \
                bitmap.from_bytes(lun.size, lun.chunk_size, raw)
            lun.restore_state(doc, max(int(doc["epoch"]), lun.newest_epoch()) + 1)
            lun.mark_written(intent.extents(), lun.epoch)   # written in the newest epoch, as far as anyone knows
            rep["maps"] = "restored, with the write-intent set merged"
            rep["intent_chunks"] = intent.count()
        else:
            lun.restore_state(doc, int(doc["epoch"]) + 1)
            # without trusted maps a crash may have hidden any write: every incremental resync becomes
            # full, and every chunk counts as written now (a changed-block map never misses one)
            lun.mark_written([(0, lun.size)], lun.epoch)
            if rep["maps"] is None:
                rep["maps"] = "no epoch maps record" if maps_gen is None else "no write-intent log"
        node = lun.backup_node
        if node is not None:
            node.restore_target_state(doc.get("backup") or {}, lun.epoch, lun_clean and node.persistent)
        for pool, pdoc in zip(lun.pools, doc["pools"]):
            pool.restore_state(pdoc, lun_clean and pool.source.persistent,
                               intent if pool.source is lun else None, rep["members"])

    def _check_record(self, lun: Lun, doc: dict) -> None:
        where = f"metadata of LUN {lun.name} in {self.store.directory}"
        if doc.get("version") != STATE_VERSION:
            raise E.MetadataError(f"{where} has version {doc.get('version')}; expected {STATE_VERSION}")
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
        parts = [lun] if lun.backup_node is None else [lun, lun.backup_node]
        ne, nb = (len(b) for b in lun.maps())
        if len(body) != (ne + nb) * len(parts):
            raise E.MetadataError(f"epoch maps of {lun.name} have the wrong length")
        pos = 0
        for node in parts:
            node.load_maps(body[pos:pos + ne], body[pos + ne:pos + ne + nb])
            pos += ne + nb
        for pool in lun.pools:
            pool.follow_source_maps()
        return gen

    def status(self) -> dict:
        return {"dir": self.store.directory, "generation": self.store.generation,
                "recovered": self.recovered, "recovery": self.report, "error": self.error}
