"""Topology: the LUNs, primary backup LUNs, pools and mirror paths of one controller, from its configuration.

Owns opening every device a configuration names (checking that each backup
side has its source's geometry), building the primary LUNs, their primary
backup LUNs (cascades) and pools, the mirror paths between them, and the
DeviceQueue of each pool member behind a slow link (a board). It keeps the
lists the controller loop walks (pools, cascade nodes, asynchronous paths,
device queues) and closes every device it opened.

It never executes a request, never decides what a TRIGGER does and never
persists anything: it only wires what the configuration says.
"""
from __future__ import annotations

from splitpoint.firmware import errors as E
from splitpoint.firmware.devio import DeviceQueue
from splitpoint.firmware.lun import Lun, LunNode
from splitpoint.firmware.mirror import MirrorPath
from splitpoint.firmware.pool import BackupPool
from splitpoint.firmware.resync import Throttle
from splitpoint.hal import HalError, open_device


class Topology:
    """What one controller's configuration wires together, in the order the loop walks it."""

    def __init__(self, config, *, queue_event=None, pool_changed=None, backups_changed=None, node_behind=None):
        self.config = config
        self.luns: dict[str, Lun] = {}
        self.pools: list[BackupPool] = []
        self.nodes: list[LunNode] = []           # primary backup LUNs (cascade hops)
        self.paths: list[MirrorPath] = []
        self.async_paths: list[MirrorPath] = []
        self.devices: list = []                  # every device opened (a queued one as its DeviceQueue)
        self.roles: list[tuple[str, str, object]] = []   # (what, url, device) of every device opened
        self.queues: dict = {}                   # DeviceQueue -> PoolMember: members behind a slow link
        self._queue_event = queue_event          # any thread: a DeviceQueue finished a read or failed an op
        self._pool_changed = pool_changed        # owner thread: a pool's state changed (urgent or not)
        self._backups_changed = backups_changed  # owner thread: a backup appeared or went
        self._node_behind = node_behind          # owner thread: a primary backup LUN started a resync sweep

    def build(self) -> None:
        """Open and wire everything the configuration names; a problem raises before anything runs."""
        cfg = self.config
        for lc in cfg.luns:
            dev = self._striped(lc, f"LUN {lc.name}") if lc.parts else self._open(lc.url, f"LUN {lc.name}")
            if cfg.chunk_size % dev.block_size:
                raise E.GeometryError(f"chunk_size {cfg.chunk_size} is not a multiple of LUN {lc.name}'s "
                                      f"block size {dev.block_size}")
            lun = Lun(lc.name, dev, cfg.chunk_size, known_zero=not dev.persistent, url=lc.url)
            self.luns[lc.name] = lun
            if lc.pool is not None:
                self._add_pool(lun, lun, lc.pool, f"{lc.name}.pool")
            if lc.backup is not None:
                if lc.backup.parts:   # a striped primary backup LUN: each part gets its stripe and the TRIGGER
                    bdev = self._striped(lc.backup, f"LUN {lc.name} primary backup LUN", like=dev)
                else:
                    bdev = self._open(lc.backup.url, f"LUN {lc.name} primary backup LUN", like=dev)
                if lc.backup.mirror == "async":   # a link's round trips stay off the loop; sync waits for its acks
                    bdev = self._queued(bdev, f"LUN {lc.name} primary backup LUN")
                node = LunNode(f"{lc.name}.backup", bdev, cfg.chunk_size,
                               known_zero=not bdev.persistent, url=lc.backup.url)
                lun.backup_node = node
                node.on_behind = self._node_behind
                self.nodes.append(node)
                self._add_path(lun, node, lc.backup.mirror)
                if bdev.persistent or dev.persistent:
                    node.start_sweep(0)   # nothing says the two hold the same bytes yet
                if lc.backup.pool is not None:
                    self._add_pool(lun, node, lc.backup.pool, f"{lc.name}.backup.pool")

    def _open(self, url: str, what: str, like=None):
        try:
            dev = open_device(url)
        except HalError as exc:
            raise E.DeviceOpenError(f"{what}: cannot open {url!r}: {exc}") from None
        self.devices.append(dev)
        self.roles.append((what, url, dev))
        if like is not None and (dev.size != like.size or dev.block_size != like.block_size):
            raise E.GeometryError(
                f"{what} {url!r} is {dev.size} bytes with block {dev.block_size}, but it must match its source: "
                f"{like.size} bytes with block {like.block_size}")
        return dev

    def _striped(self, lc, what: str, like=None):
        """A LUN (or primary backup LUN) laid out over several part devices (``layout = "stripe"``): one
        StripedDevice over them, which closes them."""
        from splitpoint.hal.stripe import StripedDevice, StripeLayoutError
        parts = [self._open(url, f"{what} part {i}") for i, url in enumerate(lc.parts)]
        try:
            dev = StripedDevice(parts, lc.stripe)
        except StripeLayoutError as exc:
            raise E.GeometryError(f"{what}: {exc}") from None
        if like is not None and (dev.size != like.size or dev.block_size != like.block_size):
            raise E.GeometryError(f"{what} is {dev.size} bytes with block {dev.block_size} over its parts, but it "
                                  f"must match its source: {like.size} bytes with block {like.block_size}")
        for p in parts:   # the striped device closes its parts
            self.devices.remove(p)
        self.devices.append(dev)
        return dev

    def _queued(self, dev, what: str):
        """A pool member whose every op waits on a link runs its I/O on a DeviceQueue, off the owner thread."""
        if not getattr(dev, "waits_on_link", False):
            return dev
        dq = DeviceQueue(dev, what, wakeup=self._queue_event)
        self.devices[self.devices.index(dev)] = dq   # closing the queue drains it, then closes the device
        return dq

    def _add_path(self, source, target, mode: str) -> MirrorPath:
        path = MirrorPath(source, target, mode, self.config.async_queue_ops, self.config.async_queue_bytes)
        source.add_path(path)
        self.paths.append(path)
        if not path.sync:
            self.async_paths.append(path)
        return path

    def _add_pool(self, lun: Lun, source: LunNode, pc, name: str) -> None:
        devs = [(url, self._queued(self._open(url, f"pool {name} member {i}", like=source.device),
                                   f"pool {name} member {i}"))
                for i, url in enumerate(pc.members)]
        rs = self.config.resync
        known_zero = (not source.persistent and source.zeros.count() == source.zeros.nchunks
                      and not any(d.persistent for _, d in devs))
        pool = BackupPool(name, lun.name, source, devs,
                          region_size=min(self.config.digest_region, max(source.size, 512)),
                          throttle=Throttle(rs.rate, rs.deadline, rs.slice, source.chunk_size),
                          known_zero=known_zero, on_change=self._pool_changed,
                          on_backups_changed=self._backups_changed)
        pool.refuse_last_copy = pc.refuse_last_copy
        if known_zero:
            pool.start_in_sync()   # both sides are fresh RAM: identical zeros
        for m in pool.members:
            if m.queued:
                self.queues[m.device] = m
        lun.pools.append(pool)
        self.pools.append(pool)
        self._add_path(source, pool, pc.mirror)

    def device_status(self) -> list[dict]:
        """Per device behind a link (a board): the host's retransmission and reconnect counters."""
        queues = {dq.device: dq for dq in self.devices if isinstance(dq, DeviceQueue)}   # pool members and nodes
        out = []
        for what, url, dev in self.roles:
            link = getattr(dev, "link_status", None)
            if link is not None:
                dq = queues.get(dev)
                out.append({"device": what, "url": url, "link": link(),
                            "queue": None if dq is None else dq.status()})
        return out

    def close(self) -> None:
        """Close every device opened (a DeviceQueue drains first); errors are ignored."""
        for dev in self.devices:
            try:
                dev.close()
            except Exception:
                pass
        self.devices = []
