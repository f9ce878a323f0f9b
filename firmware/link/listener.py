"""The device link listener: another controller feeds one of this controller's LUNs over TCP.

``splitpoint serve --device-listen HOST:PORT`` runs a ``DeviceLinkListener`` on the front end's
event loop. A peer connects and sends INFO naming one LUN (``target``, docs/wire-protocol.md,
"What device links add"); from then on its WRITE, TRIM, FLUSH, READ and TRIGGER frames are driven
by that LUN's ``DeviceSession`` (window, seq order, the reply cache that answers a duplicate
without running it again) and each request enters this controller's ring, in frame order,
through ``FrontEnd.submit``. So a TRIGGER frame is cut at its exact place in the stream and this
LUN's own pool rotates (LRU, incremental resync), as for any host's TRIGGER. The ACK goes out when
the controller completed the request. The session outlives its TCP connection: a peer that
reconnects with the same session resumes, and what was already executed is answered from the
cache, never run twice. A TRIGGER flagged MISSED (the sender could not cut there exactly) is a
barrier only: it is recorded as missed and never becomes a backup here.

It never touches storage or controller state: it only queues requests and reads completions.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time

from splitpoint.firmware import errors as E
from splitpoint.firmware.requests import FLAG_FUA, Op
from splitpoint.hal import wire
from splitpoint.hal.wire import ErrorCode, Flag, MsgType
from splitpoint.hal.wire.device_session import DeviceSession

log = logging.getLogger("splitpoint.link")

#: the largest READ length or WRITE data a link frame carries (a 256 KiB request is one frame)
MAX_TRANSFER = 256 << 10
#: requests one link keeps in flight (the session's window)
WINDOW = wire.MAX_WINDOW
#: missed TRIGGERs remembered per LUN for status
MISSED_KEPT = 64

_ERROR_CODES = ((E.OutOfRangeError, ErrorCode.OUT_OF_RANGE), (E.MisalignedError, ErrorCode.MISALIGNED),
                (E.ZeroLengthError, ErrorCode.MISALIGNED), (E.ReadOnlyError, ErrorCode.READ_ONLY))


def _error_code(exc) -> int:
    for cls, code in _ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return ErrorCode.IO


class PendingReply:
    """The reply cache's entry for a request still in the controller: the session may mark it REPLAY
    (a duplicate arrived); the reply itself is sent once, when the request completes."""

    __slots__ = ("seq", "of", "flags", "message")

    def __init__(self, seq: int, of: int):
        self.seq = seq
        self.of = of
        self.flags = 0
        self.message: wire.Message | None = None


class LinkedLun:
    """One LUN fed by a device link: its session (kept across connections) and what it cut."""

    def __init__(self, listener: "DeviceLinkListener", lun):
        self.listener = listener
        self.lun = lun
        self.session = DeviceSession(WINDOW, self._execute, self._describe, max_payload=MAX_TRANSFER + 64)
        self.conn: LinkConnection | None = None
        self.origin = ""
        self.peer = ""
        self.connected_at: float | None = None
        self.connections = 0
        self.cuts: dict[int, tuple[str, int]] = {}   # this LUN's TRIGGER id -> (origin, the sender's id)
        self.missed: list[dict] = []
        self.last_id = 0                             # the sender's newest TRIGGER id seen (a gap: missed ones)
        self.stats = self.session.stats

    def _describe(self) -> wire.BoardInfo:
        lun = self.lun
        return wire.BoardInfo(capacity=lun.size, block_size=lun.block_size, max_transfer=MAX_TRANSFER,
                              window=WINDOW, board_id=f"splitpoint {self.listener.instance:08x} {lun.name}"[:wire.MAX_BOARD_ID],
                              features=wire.Feature.FLUSH | wire.Feature.TRIM | wire.Feature.FUA
                              | wire.Feature.TRIGGER)

    # ---- requests, in seq order (the session calls this) ----
    def _execute(self, msg):
        t = msg.type
        if t in (MsgType.WRITE, MsgType.READ):
            length = len(msg.data) if t == MsgType.WRITE else msg.length
            if length > MAX_TRANSFER:
                return wire.Error(seq=msg.seq, of=t, code=ErrorCode.TOO_LARGE,
                                  message=f"{length} bytes; a link frame carries at most {MAX_TRANSFER}")
        pending = PendingReply(msg.seq, t)
        done = self._completion(pending, msg)
        submit = self.listener.frontend.submit
        lun = self.lun
        if t == MsgType.WRITE:
            submit(None, lun, Op.WRITE, msg.offset, len(msg.data), msg.data,
                   FLAG_FUA if msg.flags & Flag.FUA else 0, None, done)
        elif t == MsgType.READ:
            submit(None, lun, Op.READ, msg.offset, msg.length, None, 0, None, done)
        elif t == MsgType.TRIM:
            if msg.flags & Flag.ZEROES:
                submit(None, lun, Op.WRITE_ZEROES, msg.offset, msg.length, None,
                       FLAG_FUA if msg.flags & Flag.FUA else 0, None, done)
            else:
                submit(None, lun, Op.TRIM, msg.offset, msg.length, None, 0, None, done)
        elif t == MsgType.FLUSH:
            submit(None, lun, Op.FLUSH, 0, 0, None, 0, None, done)
        elif t == MsgType.TRIGGER and msg.flags & Flag.MISSED:
            self._note_trigger(msg.id)
            self._missed(msg.id, msg.label, "the sender was behind (resyncing) at this point")
            submit(None, lun, Op.FLUSH, 0, 0, None, 0, None, done)   # a barrier in its place, no cut
        elif t == MsgType.TRIGGER:
            self._note_trigger(msg.id)
            submit(None, lun, Op.TRIGGER, 0, 0, None, 0, msg.label or None, done)
        else:
            return wire.Error(seq=msg.seq, of=t, code=ErrorCode.UNKNOWN_TYPE, message=f"{t.name} is not a request")
        return pending

    def _completion(self, pending: PendingReply, msg):
        def done(c):
            if c.error is not None:
                reply = wire.Error(seq=pending.seq, of=pending.of, code=_error_code(c.error),
                                   message=str(c.error))
            else:
                reply = wire.Ack(seq=pending.seq, of=pending.of,
                                 data=c.data if pending.of == MsgType.READ and c.data is not None else b"")
                if c.trigger is not None:
                    self.cuts[c.trigger.id] = (self.origin, msg.id)
                    self.stats["cuts"] += 1
            pending.message = reply
            if self.conn is not None:
                self.conn.send(reply, pending.flags & Flag.REPLAY)
        return done

    def _note_trigger(self, trigger_id: int) -> None:
        """The sender numbers its TRIGGERs: ids skipped since the last one never arrived (their requests
        failed while the link was down), so they were not cut here either."""
        last = self.last_id
        if last and trigger_id > last + 1:
            for lost in range(max(last + 1, trigger_id - MISSED_KEPT), trigger_id):
                self._missed(lost, "", "never arrived: the link was down and the stream was resynced")
        self.last_id = trigger_id   # a smaller id: the sender started counting again (a restart)

    def _missed(self, trigger_id: int, label: str, why: str) -> None:
        self.stats["missed"] += 1
        log.warning("LUN %s: TRIGGER %d from %s not cut at its exact point (%s): recorded as missed, no backup",
                    self.lun.name, trigger_id, self.origin or "?", why)
        self.missed.append({"id": trigger_id, "label": label, "origin": self.origin, "why": why,
                            "time": time.time()})
        del self.missed[:-MISSED_KEPT]

    def origin_of(self, trigger_id: int) -> str | None:
        """``from <device> t<id>`` for a backup this LUN cut at a link's TRIGGER, else None."""
        cut = self.cuts.get(trigger_id)
        if cut is None:
            return None
        return f"from {cut[0] or 'a device link'} t{cut[1]}"

    def status(self) -> dict:
        s = self.session
        return {"lun": self.lun.name, "origin": self.origin, "peer": self.peer, "connected": self.conn is not None,
                "connections": self.connections, "next_seq": s.expected, "executed": self.stats.get("executed", 0),
                "replays": self.stats.get("replays", 0), "cuts": self.stats.get("cuts", 0),
                "missed": list(self.missed)}


class LinkConnection(asyncio.Protocol):
    """One TCP connection of a device link; bound to a LUN by its first INFO."""

    def __init__(self, listener: "DeviceLinkListener"):
        self.listener = listener
        self.transport = None
        self.linked: LinkedLun | None = None
        self.decoder = wire.frame.FrameDecoder(MAX_TRANSFER + 64)
        self.peer = "?"

    def connection_made(self, transport):
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.listener.connections.add(self)

    def connection_lost(self, exc):
        self.listener.connections.discard(self)
        if self.linked is not None and self.linked.conn is self:
            self.linked.conn = None   # replies of requests still running wait in the cache for a resend
        self.transport = None

    def send(self, msg, replay: int = 0) -> None:
        if self.transport is None:
            return
        if replay:
            msg.flags |= Flag.REPLAY
        self.transport.write(msg.encode())

    def data_received(self, data):
        decoder = self.decoder
        before = decoder.rejected
        for frm in decoder.feed(data):
            self._frame(frm)
        linked = self.linked
        for _ in range(decoder.rejected - before):
            if linked is not None:
                self._send_all(linked.session.on_rejected_frame())
        decoder.pop_errors()

    def _frame(self, frm) -> None:
        _version, type_, _flags, seq, payload = frm
        if type_ == MsgType.INFO and not self._bind(frm):
            return
        if self.linked is None:
            if type_ < 0x80:
                self.send(wire.Error(seq=seq, of=type_ & 0xFF, code=ErrorCode.NO_SESSION,
                                     message="no session: send INFO naming a LUN first"))
            return
        self._send_all(self.linked.session.on_frame(frm))

    def _bind(self, frm) -> bool:
        """An INFO: find its LUN and make this connection the one feeding it; False when refused."""
        try:
            info = wire.decode_message(frm)
        except wire.WireError as exc:
            self.send(wire.Error(seq=frm[3], of=MsgType.INFO, code=exc.code, message=str(exc)))
            return False
        names = self.listener.lun_names()
        if not info.target:
            self.send(wire.Error(seq=info.seq, of=MsgType.INFO, code=ErrorCode.BAD_PAYLOAD,
                                 message=f"a device link's INFO names a LUN; LUNs: {', '.join(names)}"))
            return False
        if self.linked is not None and self.linked.lun.name != info.target:
            self.send(wire.Error(seq=info.seq, of=MsgType.INFO, code=ErrorCode.BAD_PAYLOAD,
                                 message=f"this connection feeds {self.linked.lun.name}, not {info.target}"))
            return False
        linked = self.listener.linked(info.target)
        if linked is None:
            self.send(wire.Error(seq=info.seq, of=MsgType.INFO, code=ErrorCode.BAD_PAYLOAD,
                                 message=f"no LUN named {info.target!r}; LUNs: {', '.join(names)}"))
            return False
        old = linked.conn
        if old is not None and old is not self and old.transport is not None:
            log.warning("LUN %s: link from %s replaces the one from %s", info.target, self.peer, old.peer)
            old.linked = None
            old.transport.close()
        if old is not self:
            linked.connections += 1
            linked.connected_at = time.time()
        linked.conn = self
        linked.peer = self.peer
        linked.origin = info.origin or linked.origin
        self.linked = linked
        return True

    def _send_all(self, replies) -> None:
        for reply in replies:
            if isinstance(reply, PendingReply):
                if reply.message is not None:   # a duplicate of a request already answered
                    self.send(reply.message, reply.flags & Flag.REPLAY)
                # else: still running; its completion sends the reply on the connection of that moment
            else:
                self.send(reply)


class DeviceLinkListener:
    """The TCP server of ``--device-listen`` and the LUNs its peers feed."""

    def __init__(self, frontend):
        self.frontend = frontend
        self.ctl = frontend.ctl
        self.fed: dict[str, LinkedLun] = {}
        self.connections: set[LinkConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        frontend.device_links = self
        # this process's token in every INFO answer: a peer that sees it change knows this side restarted
        # (its LUN may hold other bytes now), so it resyncs in full rather than from its last acknowledged cut
        self.instance = int.from_bytes(os.urandom(4), "little")
        self.ctl.status_sources["device_links"] = self.status

    def lun_names(self) -> list[str]:
        return list(self.ctl.luns)

    def linked(self, name: str) -> LinkedLun | None:
        """The LUN ``name`` as a link feeds it (created at its first link), or None when there is no such LUN."""
        got = self.fed.get(name)
        if got is None:
            lun = self.ctl.luns.get(name)
            if lun is None:
                return None
            got = self.fed[name] = LinkedLun(self, lun)
        return got

    def feeds(self, lun_name: str) -> bool:
        """True once a link fed LUN ``lun_name``: hosts may read it, never write it."""
        return lun_name in self.fed

    def origin_of(self, lun_name: str, trigger_id: int) -> str | None:
        linked = self.fed.get(lun_name)
        return None if linked is None else linked.origin_of(trigger_id)

    async def listen(self, host: str, port: int, ssl=None) -> tuple[str, int]:
        """Take links on TCP (``ssl``: a server context, every link speaks TLS); the bound (host, port)."""
        loop = self.frontend.loop
        self.server = await loop.create_server(lambda: LinkConnection(self), host, port, reuse_address=True, ssl=ssl)
        return self.server.sockets[0].getsockname()[:2]

    def status(self) -> dict:
        return {"luns": [linked.status() for linked in self.fed.values()]}

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        if self.server is not None:
            await self.server.wait_closed()
