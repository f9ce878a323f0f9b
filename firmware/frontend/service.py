"""The front end's event loop: NBD listeners, the control channel and the controller share one thread.

The controller's sequenced ring is the batch boundary. During a loop turn every connection parses
what it received and queues its requests (``FrontEnd.submit`` -> ``ctl.submit``); the first
submission wakes the front end, which runs ``ctl.poll()`` once at the end of the turn. The poll
executes the batch and runs the completion callbacks, which queue replies on their connections;
then every connection with replies writes them in one go. Submissions from other threads (an API
user, a serial reader) reach the loop through ``ctl.wakeup`` -> ``call_soon_threadsafe``.

The front end also keeps the NBD clients' memory budget: the bytes every connection holds
(requests in flight, replies not yet drained; see ``nbd.transmission``) against a total, and the
connections waiting for room. And it gives a handshake a deadline.

A connection and the front end use only each other's public side (``nbd.connection`` lists the
connection's): a connection calls ``attach``/``detach``, ``submit``, ``backlogged``,
``mark_dirty``, ``wait_for_room``/``stop_waiting`` and ``release``, reads ``ctl``, ``loop``,
``exports``, ``stopping``, ``handshake_timeout``, ``tls`` (``nbd.tls.TlsSettings``),
``tls_context``, ``client_bytes`` and ``total_bytes``, and adds
what it charges to ``held`` (the total every connection holds; ``release`` takes it back).

The front end only queues and asks the controller what its contract answers; it never reaches
into controller state.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading

from splitpoint.firmware.errors import QueueFullError, ShuttingDownError
from splitpoint.firmware.frontend.exports import ExportTable
from splitpoint.firmware.frontend.nbd import NbdConnection
from splitpoint.firmware.frontend.nbd.tls import TlsSettings, server_context
from splitpoint.firmware.requests import FLAG_SUB_BLOCK, Completion, Op

log = logging.getLogger("splitpoint.frontend")

#: descriptors drained per ctl.poll(); a full batch means "poll again next turn"
POLL_BATCH = 256
#: bytes one NBD connection may hold (requests in flight and replies its client has not read)
CLIENT_BYTES = 64 << 20
#: ... and all of them together
TOTAL_BYTES = 256 << 20
#: seconds a client has from connecting to the end of its handshake (0: no limit)
HANDSHAKE_TIMEOUT = 10.0

_SUB_BLOCK_OPS = (Op.WRITE, Op.TRIM, Op.WRITE_ZEROES)


class FrontEnd:
    """Runs the controller on the asyncio loop thread and serves NBD clients from it."""

    def __init__(self, ctl, loop: asyncio.AbstractEventLoop | None = None, *, client_bytes: int = CLIENT_BYTES,
                 total_bytes: int = TOTAL_BYTES, handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 tls: TlsSettings | None = None):
        if client_bytes < 1 or total_bytes < client_bytes:
            raise ValueError(f"NBD memory budget: {client_bytes} bytes per client and {total_bytes} in total; "
                             f"each must be positive and the total at least the per-client budget")
        if handshake_timeout < 0:
            raise ValueError(f"handshake timeout {handshake_timeout} s: use 0 for none or a positive number")
        self.ctl = ctl
        self.loop = loop or asyncio.get_running_loop()
        self.client_bytes = client_bytes
        self.total_bytes = total_bytes
        self.handshake_timeout = handshake_timeout
        self.tls = tls or TlsSettings()
        self.tls_context = server_context(self.tls)   # None when off; a bad certificate directory fails here
        self.held = 0                                  # bytes every connection holds, together
        self.waiting: set[NbdConnection] = set()       # connections stopped until room frees
        self.connections: set[NbdConnection] = set()
        self.stopping = False
        self.exports = ExportTable(self)
        self.device_links = None         # the --device-listen listener (firmware/link), when there is one
        self._dirty: list[NbdConnection] = []
        self._tick_scheduled = False
        self._in_tick = False
        self._backlog: collections.deque = collections.deque()
        self._backlogged: set[NbdConnection] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[str] = []
        self._thread = threading.get_ident()
        self._call_soon = self.loop.call_soon
        self._background = None          # timer handle for the controller's next background slice
        self._background_at = None
        ctl.claim_owner()
        ctl.wakeup = self._wakeup
        self._plan_background()

    # --- scheduling -------------------------------------------------------------------------
    def _wakeup(self):
        """ctl.wakeup: a submission made the ring non-empty (any thread)."""
        if threading.get_ident() == self._thread:
            self.kick()
        else:
            self.loop.call_soon_threadsafe(self.kick)

    def kick(self):
        """Run one poll-and-flush at the end of this loop turn."""
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self._call_soon(self._tick)

    def mark_dirty(self, conn: NbdConnection):
        """``conn`` has replies queued; they are written at the end of this loop turn."""
        self._dirty.append(conn)
        if not self._in_tick:
            self.kick()

    def _tick(self):
        self._tick_scheduled = False
        self._in_tick = True
        try:
            done = self.ctl.poll(POLL_BATCH)
            if self._backlog:
                self._drain_backlog()
        finally:
            self._in_tick = False
        if self._dirty:
            dirty, self._dirty = self._dirty, []
            for conn in dirty:
                conn.flush_output()
        if done >= POLL_BATCH or self._backlog:
            self.kick()
        else:
            self._plan_background()

    def _plan_background(self):
        """Poll again when the controller's background work (resync, async mirror, metadata) wants it."""
        delay = self.ctl.next_background()
        if delay is None:
            return
        if delay <= 0:
            self.kick()
            return
        when = self.loop.time() + delay
        if self._background is not None:
            if self._background_at <= when:
                return
            self._background.cancel()
        self._background_at = when
        self._background = self.loop.call_at(when, self._background_due)

    def _background_due(self):
        self._background = None
        self.kick()

    def release(self, n: int):
        """``n`` charged bytes left the front end: the connections waiting for room try again."""
        self.held -= n
        if self.waiting:
            for conn in list(self.waiting):
                conn.try_unblock()

    def attach(self, conn: NbdConnection):
        """A client connected: it is served until ``detach``."""
        self.connections.add(conn)

    def detach(self, conn: NbdConnection):
        """A client went away: it no longer waits for room or takes part in shutdown."""
        self.connections.discard(conn)
        self.waiting.discard(conn)

    def wait_for_room(self, conn: NbdConnection):
        """``conn`` stopped reading until charged bytes are released; ``release`` calls its ``try_unblock``."""
        self.waiting.add(conn)

    def stop_waiting(self, conn: NbdConnection):
        self.waiting.discard(conn)

    def backlogged(self) -> bool:
        """Requests are held back because the ring was full: new ones must queue behind them."""
        return bool(self._backlog)

    # --- submissions --------------------------------------------------------------------------
    def submit(self, conn, lun, op, offset, length, data, flags, label, callback):
        """Queue one request on the controller; when its ring is full, hold it (in order) and pause ``conn``.

        A ``conn`` that is ``sub_block`` (a request not aligned to its block, see ``nbd``) has its
        WRITE, TRIM and WRITE_ZEROES executed by the controller as sub-block requests.
        """
        if conn is not None and conn.sub_block and op in _SUB_BLOCK_OPS:
            flags |= FLAG_SUB_BLOCK
        if not self._backlog:
            try:
                self.ctl.submit(lun, op, offset, length, data, flags, label, callback)
                return
            except QueueFullError:
                pass
            except ShuttingDownError as exc:   # close() began: the request is answered, never lost
                callback(Completion(0, op, exc))
                return
        self._backlog.append((lun, op, offset, length, data, flags, label, callback))
        if conn is not None and conn not in self._backlogged:
            self._backlogged.add(conn)
            conn.pause("backlog")
        self.kick()

    def trigger_group(self, group, label, callback):
        """Cut every LUN of a configured group (``firmware/group.py``); ``callback(GroupCut | error)``.

        A ring without room for all of the group's TRIGGERs answers the error at once: nothing is cut."""
        try:
            group.trigger(self.ctl, label, callback)
        except (QueueFullError, ShuttingDownError) as exc:
            callback(exc)
            return
        self.kick()

    def _drain_backlog(self):
        backlog = self._backlog
        submit = self.ctl.submit
        while backlog:
            try:
                submit(*backlog[0])
            except QueueFullError:
                return
            except ShuttingDownError as exc:
                entry = backlog[0]
                entry[7](Completion(0, entry[1], exc))
            backlog.popleft()
        for conn in self._backlogged:
            conn.resume("backlog")
        self._backlogged.clear()

    # --- listeners ------------------------------------------------------------------------------
    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Serve NBD on TCP; returns the bound (host, port) (port 0 picks a free one)."""
        server = await self.loop.create_server(lambda: NbdConnection(self), host, port, reuse_address=True)
        self._servers.append(server)
        return server.sockets[0].getsockname()[:2]

    async def listen_unix(self, path: str) -> str:
        """Serve NBD on a Unix socket at ``path`` (a stale socket file there is replaced)."""
        if os.path.exists(path):
            import stat
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise FileExistsError(f"{path} exists and is not a socket; choose another --socket path")
            os.unlink(path)
        server = await self.loop.create_unix_server(lambda: NbdConnection(self), path)
        self._servers.append(server)
        self._unix_paths.append(path)
        return path

    # --- shutdown ----------------------------------------------------------------------------------
    async def shutdown(self, timeout: float = 30.0, close_controller: bool = True):
        """Stop accepting, answer what is in flight (new requests get ESHUTDOWN), close the controller."""
        self.stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + timeout
        while (self._backlog or any(c.inflight for c in self.connections)) and self.loop.time() < deadline:
            self._tick()
            await asyncio.sleep(0.001)
        for conn in list(self.connections):
            conn.flush_output()
            if conn.transport is not None:
                conn.transport.close()
        if self._background is not None:
            self._background.cancel()
        if close_controller:
            self.ctl.close()
        for server in self._servers:
            await server.wait_closed()
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT', or just 'PORT') -> (host, port); ValueError says what is expected."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {value!r}: expected HOST:PORT with a port from 0 to 65535")
    return host, int(port)


class Service:
    """A running front end: listeners, control channel and controller on one loop."""

    def __init__(self, frontend: FrontEnd, control, endpoints: list[str], links=None):
        self.frontend = frontend
        self.control = control
        self.endpoints = endpoints
        self.links = links               # DeviceLinkListener of --device-listen, or None

    @classmethod
    async def start(cls, ctl, listen: tuple[str, int] | None = ("127.0.0.1", 10809), socket_path: str | None = None,
                    control_url: str | None = None, control_link: str | None = None, control: bool = True,
                    client_bytes: int = CLIENT_BYTES, total_bytes: int = TOTAL_BYTES,
                    handshake_timeout: float = HANDSHAKE_TIMEOUT, tls: TlsSettings | None = None,
                    device_listen: tuple[str, int] | None = None, device_tls=None):
        from splitpoint.firmware.frontend.control import open_channel

        fe = FrontEnd(ctl, client_bytes=client_bytes, total_bytes=total_bytes, handshake_timeout=handshake_timeout,
                      tls=tls)
        endpoints = []
        links = None
        try:
            if device_listen is not None:   # first: a peer's link is refused until this LUN's exports exist
                from splitpoint.firmware.link.listener import DeviceLinkListener
                links = DeviceLinkListener(fe)
                host, port = await links.listen(*device_listen, ssl=device_tls)
                scheme = "link+tls" if device_tls is not None else "link"
                endpoints.append(f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}")
            if listen is not None:
                host, port = await fe.listen_tcp(*listen)
                endpoints.append(f"nbd://{host}:{port}" if ":" not in host else f"nbd://[{host}]:{port}")
            if socket_path is not None:
                path = await fe.listen_unix(socket_path)
                endpoints.append(f"nbd+unix:///?socket={path}")
            channel = open_channel(fe, control_url, control_link) if control else None
        except BaseException:
            if links is not None:
                await links.close()
            await fe.shutdown(close_controller=False)
            raise
        return cls(fe, channel, endpoints, links)

    async def stop(self):
        """Clean shutdown: answer what is in flight, drain the queue, persist metadata."""
        if self.links is not None:
            await self.links.close()
        await self.frontend.shutdown()
        if self.control is not None:
            self.control.close()


class ServiceThread:
    """A service on its own event-loop thread, for embedding (tests, scripts): ``with ServiceThread(ctl) as s:``.

    The thread owns the controller while it runs; use NBD or the control channel to talk to it.
    """

    def __init__(self, ctl, **options):
        self.ctl = ctl
        self.options = options
        self.service: Service | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="splitpoint-frontend", daemon=True)

    def _run(self):
        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                self.service = await Service.start(self.ctl, **self.options)
            except BaseException as exc:  # reported to the starting thread
                self.error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.service.stop()
        asyncio.run(main())

    def start(self) -> Service:
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error
        return self.service

    def stop(self):
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc):
        self.stop()
