"""The NBD server: fixed-newstyle handshake and the transmission phase, one asyncio protocol per client.

A connection receives into its own buffer (``BufferedProtocol``: recv_into, no allocation per
read), parses every complete message there, validates each request against the export it
negotiated, and queues it on the controller, directly for LUN READ/WRITE or through its export
otherwise. Replies are gathered per connection and written once per loop turn, after the front
end's ``ctl.poll()`` (see ``service.FrontEnd``). A connection never executes I/O itself and
never blocks the loop.

Memory: every request is charged, from the moment it is parsed until its reply has left the
transport's buffer, against the connection's budget and the front end's total (a READ or WRITE
its length, anything else ``_SMALL_COST`` or its reply's size). A request that does not fit stays
unparsed in the receive buffer and the connection stops reading until enough is released; a
client that does not read its replies keeps them charged, so it stops itself and no one else. A
connection holding nothing may always take one request (up to the 64 MiB maximum) if the total
allows it, or if nothing at all is charged.

Protocol notes (doc/proto.md):
- the server offers NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES and drops a client that sets
  unknown client flags;
- options: EXPORT_NAME, ABORT, LIST, INFO, GO (INFO_EXPORT, INFO_BLOCK_SIZE always; INFO_NAME and
  INFO_DESCRIPTION when asked), STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT for
  ``base:allocation``; anything else gets NBD_REP_ERR_UNSUP and the handshake goes on;
- a client that negotiated no block size (NBD_OPT_EXPORT_NAME, or NBD_OPT_GO without asking for
  NBD_INFO_BLOCK_SIZE) may send requests of any alignment: READ, CACHE and BLOCK_STATUS are
  widened to whole blocks here, WRITE, TRIM and WRITE_ZEROES go to the controller as sub-block
  requests (it reads, modifies and writes the partial blocks in sequence); for a client that did
  ask, unaligned I/O is EINVAL;
- a handshake that has not reached transmission after the front end's handshake timeout is closed;
- errors: unknown command or flag and unaligned I/O (see above) -> EINVAL; past the end -> ENOSPC for writes,
  EINVAL otherwise; writes to a read-only export -> EPERM; while stopping -> ESHUTDOWN; a READ
  above 64 MiB -> EOVERFLOW with structured replies (EINVAL without); a WRITE above 64 MiB has
  its payload skipped and gets EINVAL;
- a bad magic (option or request) is a protocol violation: that client is disconnected.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import struct

import numpy as np

from splitpoint.firmware.errors import QueueFullError, ShuttingDownError
from splitpoint.firmware.frontend import wire
from splitpoint.firmware.frontend.wire import (
    CMD_BLOCK_STATUS, CMD_CACHE, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    EINVAL, ENOSPC, EOVERFLOW, EPERM, ESHUTDOWN, MAX_REQUEST, REQUEST_MAGIC,
)
from splitpoint.firmware.requests import FLAG_FUA, Op
from splitpoint.pyx import select as _select_kernel

log = logging.getLogger("splitpoint.nbd")

_CLIENT_FLAGS, _OPTIONS, _TRANSMISSION, _CLOSED = range(4)

#: requests in flight on one connection before it stops reading (and resumes below _RESUME)
_PAUSE_INFLIGHT = 1024
_RESUME_INFLIGHT = 256
#: what a request other than READ or WRITE is charged until its reply is out (or its reply's size)
_SMALL_COST = 4096
#: reply pieces at least this large are written on their own instead of being joined
_WRITE_ALONE = 64 << 10
#: receive buffer per connection, and the free room below which it is compacted before a recv
_BUF_SIZE = 512 << 10
_MIN_FREE = 64 << 10
#: WRITE payloads at least this large go to the controller as slices of the receive buffer (no
#: copy; the buffer is then retired); smaller ones are copied so a long-lived payload (an async
#: mirror queue) never pins a whole buffer
_LEND_MIN = 128 << 10
#: send buffer asked for on a Unix socket (see _widen_send_buffer)
_SEND_BUFFER = 4 << 20
#: where skipped bytes (oversized requests or options) are received, shared by every connection
_SCRATCH_SIZE = 256 << 10
_SCRATCH_VIEW = memoryview(bytearray(_SCRATCH_SIZE))

_REQUEST = wire.REQUEST
_scan = _select_kernel("nbdwire").scan


def _new_buffer(size: int) -> memoryview:
    """An uninitialised byte buffer (numpy.empty: no memset; recv_into overwrites it anyway)."""
    return memoryview(np.empty(size, dtype=np.uint8))

def _widen_send_buffer(transport):
    """A Unix socket's send buffer holds a QD8 batch of large READ replies (2 MiB), not 208 KiB.

    On AF_UNIX the sender's buffer is all the room a stream has: with the default, every 256 KiB
    reply is written in pieces, each waiting for the client to drain the last. The kernel caps
    the request at net.core.wmem_max; TCP keeps its own autotuning.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < _SEND_BUFFER:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
    except OSError as exc:   # a transport over something else; the default still works
        log.debug("cannot widen the send buffer: %s", exc)


_SIMPLE_OK = struct.Struct(">IIQ")
_SIMPLE_MAGIC = wire.SIMPLE_REPLY_MAGIC
_OP_READ = int(Op.READ)
_OP_WRITE = int(Op.WRITE)
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_META_CONTEXT_ID = 1

_WRITE_CMDS = (CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES)


_NBD_FUA = wire.CMD_FLAG_FUA   # the only flag a fast-path WRITE may carry (wmask drops the rest)


class NbdConnection(asyncio.BufferedProtocol):
    """One NBD client, from greeting to disconnect."""

    #: what the front end asks the controller for this connection's writes: aligned requests only
    sub_block = False

    def __init__(self, frontend):
        self.fe = frontend
        self.transport = None
        self.peer = "?"
        self.export = None
        self._phase = _CLIENT_FLAGS
        self._view = _new_buffer(_BUF_SIZE)  # received bytes land here (recv_into); [_start, _end) unparsed
        self._start = 0
        self._end = 0
        self._want = 4                     # bytes from _start needed before parsing can progress
        self._lent = False                 # a slice of _view went to the controller: switch buffers
        self._discard = 0                  # payload bytes still to skip (an oversized request or option)
        self._discard_done = None
        self._no_zeroes = False
        self._structured = False
        self._meta_export = None      # export name the selected meta context applies to
        self._meta_ok = False
        self._allowed = {}
        self._fast_lun = None          # the LUN READ/WRITE go straight to (a plain LUN export only)
        self._fast = None              # what the fast path needs, looked up once (see _enter_transmission)
        self._bsmask = 0
        self._size = 0
        self._out = []
        self._out_big = False          # a piece of _out is at least _WRITE_ALONE bytes
        self._inflight = 0
        self._disc = False
        self._paused = set()
        self.closed = False
        self._any_alignment = False    # negotiated no block size: requests of any alignment are served
        self._held = 0                 # bytes charged (see the module docstring): in flight, queued, unsent
        self._costs = {}               # cookie -> its charge (a list when a client reuses a cookie in flight)
        self._out_cost = 0             # the charge of the replies in _out
        self._unsent = 0               # the charge of replies written while the transport was full
        self._blocked = None           # the charge of the request waiting for room, while reading is stopped
        self._handshake_timer = None

    # --- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        _widen_send_buffer(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (peer or "unix")
        self.fe.connections.add(self)
        transport.write(wire.GREETING.pack(wire.NBDMAGIC, wire.IHAVEOPT,
                                           wire.FLAG_FIXED_NEWSTYLE | wire.FLAG_NO_ZEROES))
        if self.fe.handshake_timeout:
            self._handshake_timer = self.fe.loop.call_later(self.fe.handshake_timeout, self._handshake_expired)
        log.debug("%s: connected", self.peer)

    def connection_lost(self, exc):
        self.closed = True
        self._phase = _CLOSED
        self._fast = None
        self._out.clear()
        self.fe.connections.discard(self)
        self._stop_handshake_timer()
        self._blocked = None
        self.fe.waiting.discard(self)
        self._costs.clear()
        held, self._held, self._out_cost, self._unsent = self._held, 0, 0, 0
        if held:
            self.fe.release(held)
        if self._inflight:
            log.info("%s: client went away with %d request(s) in flight", self.peer, self._inflight)
        log.debug("%s: disconnected (%s)", self.peer, exc or "clean")

    def pause_writing(self):
        self._pause("writing")

    def resume_writing(self):
        """The client drained its replies below the low-water mark: their charge is released."""
        unsent, self._unsent = self._unsent, 0
        self._resume("writing")
        if unsent:
            self._release(unsent)

    def get_buffer(self, sizehint):
        """Where the transport's next recv_into lands.

        While a large message is incomplete, only up to its end: its payload is then whole in
        the buffer and goes to the controller without a copy. Skipped bytes go to scratch.
        """
        if self._discard:
            return _SCRATCH_VIEW[:min(self._discard, _SCRATCH_SIZE)]
        need = self._start + self._want
        if need > len(self._view):
            self._move(max(_BUF_SIZE, self._want + _MIN_FREE))
            need = self._want
        if self._want >= _LEND_MIN:
            return self._view[self._end:need]
        if len(self._view) - self._end < _MIN_FREE:
            # grows only for a transport that delivers while reading is stopped (data_received)
            self._move(max(len(self._view), self._end - self._start + _MIN_FREE))
        return self._view[self._end:]

    def buffer_updated(self, nbytes):
        if self._discard:
            self._discard -= nbytes
            if not self._discard:
                done, self._discard_done = self._discard_done, None
                done()
            return
        self._end += nbytes
        if self._end - self._start < self._want or self._blocked is not None:
            return
        self._process()

    def _process(self):
        """Parse what ``[_start, _end)`` holds, then retire or compact the receive buffer."""
        if self._phase == _TRANSMISSION:
            start = self._parse_requests(self._view, self._start, self._end)
        else:
            start = self._parse(self._view, self._start, self._end)
        if self._lent:
            # the controller holds slices of this buffer: what is left moves to a fresh one
            self._lent = False
            left = self._end - start
            fresh = _new_buffer(max(_BUF_SIZE, self._want + _MIN_FREE))
            fresh[:left] = self._view[start:self._end]
            self._view, self._start, self._end = fresh, 0, left
        elif start >= self._end:
            self._start = self._end = 0
        else:
            self._start = start

    def data_received(self, data):
        """The same input through the non-buffered interface (any transport, tests)."""
        data = memoryview(data)
        while data:
            target = self.get_buffer(len(data))
            n = min(len(target), len(data))
            target[:n] = data[:n]
            self.buffer_updated(n)
            data = data[n:]

    def _move(self, size: int):
        """Put the unparsed bytes at the front of a buffer of ``size`` bytes (a new one if it must grow)."""
        start, end = self._start, self._end
        left = bytes(self._view[start:end])
        if size > len(self._view):
            self._view = _new_buffer(size)
        self._view[:end - start] = left
        self._start, self._end = 0, end - start

    def eof_received(self):
        return False

    # --- parsing -------------------------------------------------------------------------
    def _parse(self, buf, pos: int, n: int) -> int:
        """Handle every complete message in ``buf[pos:n]``; return where parsing stopped."""
        while True:
            phase = self._phase
            if phase == _TRANSMISSION:
                return self._parse_requests(buf, pos, n)
            if phase == _OPTIONS:
                if n - pos < 16:
                    self._want = 16
                    return pos
                magic, opt, optlen = wire.OPTION.unpack_from(buf, pos)
                if magic != wire.IHAVEOPT:
                    self._violation(f"bad option magic {magic:#x}")
                    return n
                start = pos + 16
                if optlen > wire.MAX_OPTION:
                    skip = min(optlen, n - start)
                    done = functools.partial(self._option_too_big, opt, optlen)
                    if optlen > skip:
                        self._discard, self._discard_done, self._want = optlen - skip, done, 16
                        return n
                    done()
                    pos = start + skip
                    continue
                end = start + optlen
                if end > n:
                    self._want = end - pos
                    return pos
                self._option(opt, bytes(buf[start:end]))
                pos = end
                continue
            if phase == _CLIENT_FLAGS:
                if n - pos < 4:
                    self._want = 4
                    return pos
                (flags,) = _U32.unpack_from(buf, pos)
                pos += 4
                if flags & ~wire.CLIENT_FLAGS_KNOWN:
                    self._violation(f"unknown client flags {flags:#x}")
                    return n
                self._no_zeroes = bool(flags & wire.FLAG_C_NO_ZEROES)
                self._phase = _OPTIONS
                continue
            return n  # closed or disconnecting: ignore whatever follows

    def _parse_requests(self, buf, pos, n):
        """Every complete request in ``buf[pos:n]`` that the memory budget admits; READ and WRITE
        of a LUN take a fast path.

        ``nbdwire.scan`` cuts the complete requests out of the buffer in one call (small WRITE
        payloads copied, large ones lent as slices of the buffer, which is then retired); what
        it leaves to this method is a bad magic or an oversized WRITE at the position it stopped.
        A request the budget does not admit ends parsing at its own position (it is scanned again
        once room frees). The fast path is the generic one with the dispatch layers folded in: the
        same checks (flags, alignment, bounds, not stopping, nothing held back by a full ring),
        then straight to ``ctl.submit``. Anything it does not take goes through ``_request``.
        """
        request = self._request
        fast = self._fast
        fe = self.fe
        if fast is not None and not fe.stopping and not fe._backlog:
            lun, submit, on_write, on_read, wmask, rmask, bsmask, size = fast
            partial = functools.partial
        else:
            lun = None
        costs = self._costs
        client_bytes, total_bytes = fe.client_bytes, fe.total_bytes
        # the charges, kept in locals over the fast path and written back before anything else runs
        held, all_held = self._held, fe.held
        while True:
            requests, _stop, want = _scan(buf, pos, n, _LEND_MIN, MAX_REQUEST)
            for cmd, flags, cookie, offset, length, payload in requests:
                here = pos
                pos += 28 + length if cmd == CMD_WRITE else 28
                if cmd != CMD_DISC:     # DISC gets no reply and holds nothing
                    cost = length if cmd <= CMD_WRITE else _SMALL_COST
                    if (held and (held + cost > client_bytes or self._inflight >= _PAUSE_INFLIGHT)
                            or all_held and all_held + cost > total_bytes):
                        self._held, fe.held = held, all_held
                        self._block(cost)
                        return here
                    held += cost
                    all_held += cost
                    if cookie in costs:
                        self._charge_again(cookie, cost)
                    else:
                        costs[cookie] = cost
                if (lun is not None and cmd <= CMD_WRITE and not (offset | length) & bsmask and length
                        and offset + length <= size):
                    if cmd == CMD_WRITE:
                        if length >= _LEND_MIN:
                            self._lent = True
                        if not flags & wmask:
                            self._inflight += 1
                            try:
                                # NBD flags become the controller's here, never passed through raw
                                submit(lun, _OP_WRITE, offset, length, payload,
                                       FLAG_FUA if flags & _NBD_FUA else 0, None, partial(on_write, cookie))
                                continue
                            except (QueueFullError, ShuttingDownError):
                                self._inflight -= 1
                                lun = None
                    elif not flags & rmask and length <= MAX_REQUEST:
                        self._inflight += 1
                        try:
                            submit(lun, _OP_READ, offset, length, None, 0, None, partial(on_read, cookie, offset))
                            continue
                        except (QueueFullError, ShuttingDownError):
                            self._inflight -= 1
                            lun = None
                elif cmd == CMD_WRITE and length >= _LEND_MIN:
                    self._lent = True
                self._held, fe.held = held, all_held
                request(cmd, flags, cookie, offset, length, payload)   # may reply at once (and charge)
                held, all_held = self._held, fe.held
                if self._phase != _TRANSMISSION:
                    return n
            self._held, fe.held = held, all_held
            if want:
                if want >= _LEND_MIN and not self._fits(want - 28):
                    self._block(want - 28, want)   # a large WRITE's payload is received once it fits
                else:
                    self._want = want
                return pos
            # a bad magic or an oversized WRITE at pos
            magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(buf, pos)
            if magic != REQUEST_MAGIC:
                self._violation(f"bad request magic {magic:#x}")
                return n
            start = pos + 28
            self._inflight += 1
            self._charge(cookie, _SMALL_COST)   # its payload is skipped, never held
            skip = min(length, n - start)
            done = functools.partial(self.reply_error, cookie, EINVAL,
                                     f"WRITE of {length} bytes is over the {MAX_REQUEST}-byte limit")
            if length > skip:
                self._discard, self._discard_done, self._want = length - skip, done, 28
                return n
            done()
            pos = start + length
            held, all_held = self._held, fe.held

    # --- memory budget -------------------------------------------------------------------
    def _charge(self, cookie, cost):
        self._held += cost
        self.fe.held += cost
        if cookie in self._costs:
            self._charge_again(cookie, cost)
        else:
            self._costs[cookie] = cost

    def _charge_again(self, cookie, cost):
        """A cookie already in flight (the client breaks the protocol's rule): keep every charge."""
        prior = self._costs[cookie]
        self._costs[cookie] = prior + [cost] if type(prior) is list else [prior, cost]

    def _replied(self, cookie, size):
        """The final reply of ``cookie`` (``size`` bytes) is queued: its charge moves to the output.

        A reply larger than its request's charge is charged the difference. For a reused cookie the
        smallest of its charges goes, so what stays charged is never less than what is in flight.
        """
        cost = self._costs.pop(cookie, 0)
        if type(cost) is list:
            cost.remove(least := min(cost))
            self._costs[cookie] = cost if len(cost) > 1 else cost[0]
            cost = least
        if size > cost:
            self._held += size - cost
            self.fe.held += size - cost
            cost = size
        self._out_cost += cost

    def _release(self, n):
        self._held -= n
        self.fe.release(n)   # tries every connection waiting for room, this one included

    def _fits(self, cost, most_inflight=_PAUSE_INFLIGHT) -> bool:
        """Whether a request charged ``cost`` may be taken now."""
        fe = self.fe
        held = self._held
        if held and (held + cost > fe.client_bytes or self._inflight >= most_inflight):
            return False
        return not (fe.held and fe.held + cost > fe.total_bytes)

    def _block(self, cost, want=28):
        """The next request (charged ``cost``, ``want`` bytes from the parse position) does not
        fit: stop reading until room frees."""
        self._blocked = cost
        self._want = want
        self.fe.waiting.add(self)
        self._pause("budget")

    def try_unblock(self):
        """Room was released somewhere: resume reading if the waiting request now fits."""
        cost = self._blocked
        if cost is None or not self._fits(cost, _RESUME_INFLIGHT):
            return
        fe = self.fe
        self._blocked = None
        fe.waiting.discard(self)
        self._resume("budget")
        fe.loop.call_soon(self._parse_buffered)

    def _parse_buffered(self):
        """Room freed: parse the requests received before reading stopped (they wait in the buffer)."""
        if self.closed or self._blocked is not None or self._discard or self._phase != _TRANSMISSION:
            return
        if self._end - self._start >= self._want:
            self._process()

    # --- handshake timeout -------------------------------------------------------------------
    def _stop_handshake_timer(self):
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_expired(self):
        self._handshake_timer = None
        if self.closed or self._phase not in (_CLIENT_FLAGS, _OPTIONS):
            return
        log.warning("%s: handshake not finished within %g s; closing this connection",
                    self.peer, self.fe.handshake_timeout)
        self._phase = _CLOSED
        self.closed = True
        self.transport.close()

    # --- handshake -----------------------------------------------------------------------
    def _opt_reply(self, opt, reply, payload=b""):
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "replace")[: wire.MAX_STRING]
        self.transport.write(wire.option_reply(opt, reply, payload))

    def _option_too_big(self, opt, optlen):
        if opt == wire.OPT_EXPORT_NAME:
            self._violation(f"NBD_OPT_EXPORT_NAME of {optlen} bytes")
            return
        known = opt in (wire.OPT_ABORT, wire.OPT_LIST, wire.OPT_STARTTLS, wire.OPT_INFO, wire.OPT_GO,
                        wire.OPT_STRUCTURED_REPLY, wire.OPT_LIST_META_CONTEXT, wire.OPT_SET_META_CONTEXT)
        self._opt_reply(opt, wire.REP_ERR_TOO_BIG if known else wire.REP_ERR_UNSUP,
                        f"option {opt} with {optlen} bytes of data is over the {wire.MAX_OPTION}-byte limit")

    def _option(self, opt, data: bytes):
        if self.fe.stopping and opt not in (wire.OPT_ABORT, wire.OPT_EXPORT_NAME):
            self._opt_reply(opt, wire.REP_ERR_SHUTDOWN, "server is shutting down")
            return
        handler = _OPTION_HANDLERS.get(opt)
        if handler is None:
            self._opt_reply(opt, wire.REP_ERR_UNSUP, f"option {opt} is not supported by this server")
            return
        handler(self, opt, data)

    def _opt_export_name(self, opt, data):
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            self._violation("export name is not UTF-8")
            return
        export = None if self.fe.stopping else self.fe.exports.open(name)
        if export is None:
            self._violation(f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
            return
        reply = wire.EXPORT_NAME_REPLY.pack(export.size, export.transmission_flags(self._structured))
        if not self._no_zeroes:
            reply += bytes(124)
        self.transport.write(reply)
        self._any_alignment = True   # this client cannot have learnt a block size
        self._enter_transmission(name, export)

    def _opt_abort(self, opt, data):
        self._opt_reply(opt, wire.REP_ACK)
        self._phase = _CLOSED
        self.transport.close()

    def _opt_list(self, opt, data):
        if data:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "NBD_OPT_LIST carries no data")
            return
        for name, description in self.fe.exports.listing():
            raw = name.encode()
            self._opt_reply(opt, wire.REP_SERVER, _U32.pack(len(raw)) + raw + description.encode("utf-8", "replace"))
        self._opt_reply(opt, wire.REP_ACK)

    def _opt_starttls(self, opt, data):
        self._opt_reply(opt, wire.REP_ERR_UNSUP, "TLS is not supported by this server")

    def _opt_structured_reply(self, opt, data):
        if data:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data")
            return
        self._structured = True
        self._opt_reply(opt, wire.REP_ACK)

    def _opt_info_go(self, opt, data):
        if len(data) < 6:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "option data shorter than 6 bytes")
            return
        (namelen,) = _U32.unpack_from(data, 0)
        if namelen > len(data) - 6:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "export name length past the option data")
            return
        (nreq,) = _U16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * nreq:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "information request list does not match the option length")
            return
        try:
            name = data[4:4 + namelen].decode("utf-8")
        except UnicodeDecodeError:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "export name is not UTF-8")
            return
        requests = struct.unpack_from(f">{nreq}H", data, 6 + namelen)
        export = self.fe.exports.open(name)
        if export is None:
            self._opt_reply(opt, wire.REP_ERR_UNKNOWN, f"no export named {name!r}; list them with NBD_OPT_LIST")
            return
        info = wire.INFO_EXPORT_PAYLOAD.pack(wire.INFO_EXPORT, export.size, export.transmission_flags(self._structured))
        self._opt_reply(opt, wire.REP_INFO, info)
        sizes = wire.INFO_BLOCK_SIZE_PAYLOAD.pack(wire.INFO_BLOCK_SIZE, *export.block_sizes())
        self._opt_reply(opt, wire.REP_INFO, sizes)
        if wire.INFO_NAME in requests:
            self._opt_reply(opt, wire.REP_INFO, _U16.pack(wire.INFO_NAME) + export.name.encode())
        if wire.INFO_DESCRIPTION in requests:
            self._opt_reply(opt, wire.REP_INFO, _U16.pack(wire.INFO_DESCRIPTION)
                            + export.description.encode("utf-8", "replace")[: wire.MAX_STRING])
        self._opt_reply(opt, wire.REP_ACK)
        if opt == wire.OPT_GO:
            # the sizes sent bind only a client that asked for them (doc/proto.md, block size constraints)
            self._any_alignment = wire.INFO_BLOCK_SIZE not in requests
            self._enter_transmission(name, export)

    def _parse_meta(self, opt, data):
        """(export name, queries) of a LIST/SET_META_CONTEXT option, or None after replying INVALID."""
        try:
            if len(data) < 8:
                raise ValueError("option data shorter than 8 bytes")
            (namelen,) = _U32.unpack_from(data, 0)
            if namelen > len(data) - 8:
                raise ValueError("export name length past the option data")
            name = data[4:4 + namelen].decode("utf-8")
            pos = 4 + namelen
            (count,) = _U32.unpack_from(data, pos)
            pos += 4
            queries = []
            for _ in range(count):
                if pos + 4 > len(data):
                    raise ValueError("query count past the option data")
                (qlen,) = _U32.unpack_from(data, pos)
                pos += 4
                if pos + qlen > len(data):
                    raise ValueError("query length past the option data")
                query = data[pos:pos + qlen].decode("utf-8")
                pos += qlen
                if ":" not in query:
                    raise ValueError(f"query {query!r} has no namespace (namespace:leaf)")
                queries.append(query)
            if pos != len(data):
                raise ValueError("trailing bytes after the queries")
        except (ValueError, UnicodeDecodeError) as exc:
            self._opt_reply(opt, wire.REP_ERR_INVALID, str(exc))
            return None
        return name, queries

    def _opt_meta_context(self, opt, data):
        setting = opt == wire.OPT_SET_META_CONTEXT
        if setting:
            self._meta_export, self._meta_ok = None, False
        if not self._structured:
            self._opt_reply(opt, wire.REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY first")
            return
        parsed = self._parse_meta(opt, data)
        if parsed is None:
            return
        name, queries = parsed
        if self.fe.exports.open(name) is None:
            self._opt_reply(opt, wire.REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        if setting:
            matched = wire.META_BASE_ALLOCATION in queries
        else:
            matched = not queries or any(q in ("base:", wire.META_BASE_ALLOCATION) for q in queries)
        if matched:
            ctx_id = _META_CONTEXT_ID if setting else 0
            self._opt_reply(opt, wire.REP_META_CONTEXT, _U32.pack(ctx_id) + wire.META_BASE_ALLOCATION.encode())
            if setting:
                self._meta_export, self._meta_ok = name, True
        self._opt_reply(opt, wire.REP_ACK)

    def _enter_transmission(self, name, export):
        self._stop_handshake_timer()
        self.export = export
        self._meta_ok = self._meta_ok and self._meta_export == name
        fua = 0 if export.read_only else wire.CMD_FLAG_FUA
        self._allowed = {
            CMD_READ: fua | (wire.CMD_FLAG_DF if self._structured else 0),
            CMD_WRITE: fua,
            CMD_FLUSH: fua,
            CMD_TRIM: fua,
            CMD_CACHE: fua,
            CMD_WRITE_ZEROES: fua | wire.CMD_FLAG_NO_HOLE | wire.CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS: fua | wire.CMD_FLAG_REQ_ONE,
        }
        self._fast_lun = None if export.read_only else getattr(export, "fast_lun", None)
        self._bsmask = export.block_size - 1
        self._size = export.size
        if self._fast_lun is not None:
            self._fast = (self._fast_lun, self.fe.ctl.submit, self._on_write, self._on_read, ~self._allowed[CMD_WRITE],
                          ~self._allowed[CMD_READ], self._bsmask, self._size)
        self._phase = _TRANSMISSION
        self._want = 28
        log.debug("%s: transmission on export %r", self.peer, export.name)

    # --- transmission ----------------------------------------------------------------------
    def _request(self, cmd, flags, cookie, offset, length, payload):
        if cmd == CMD_DISC:
            self._disconnect()
            return
        self._inflight += 1
        allowed = self._allowed.get(cmd)
        if allowed is None:
            self.reply_error(cookie, EINVAL, f"unknown command {cmd}")
            return
        export = self.export
        name = wire.CMD_NAMES[cmd]
        if self.fe.stopping:
            self.reply_error(cookie, ESHUTDOWN, "server is shutting down")
            return
        if export.read_only and cmd in _WRITE_CMDS:
            self.reply_error(cookie, EPERM, f"{name} on read-only export {export.name!r}")
            return
        if flags & ~allowed:
            self.reply_error(cookie, EINVAL, f"command flags {flags & ~allowed:#x} are not valid for {name}")
            return
        if cmd == CMD_FLUSH:
            if offset or length:
                self.reply_error(cookie, EINVAL, "FLUSH must have offset and length 0")
                return
            export.flush(self, cookie, flags)
            return
        if cmd == CMD_READ and length > MAX_REQUEST:
            self.reply_error(cookie, EOVERFLOW if self._structured else EINVAL,
                             f"READ of {length} bytes is over the {MAX_REQUEST}-byte limit")
            return
        size = export.size
        if offset > size or length > size - offset:
            err = ENOSPC if cmd in (CMD_WRITE, CMD_WRITE_ZEROES) else EINVAL
            self.reply_error(cookie, err, f"{name} [{offset}, +{length}) is past the end of "
                                          f"{export.name!r} ({size} bytes)")
            return
        bs = export.block_size
        if (offset % bs or length % bs) and not self._any_alignment:
            self.reply_error(cookie, EINVAL, f"{name} [{offset}, +{length}) is not aligned to the "
                                             f"minimum block size {bs}")
            return
        if length == 0:
            if cmd == CMD_BLOCK_STATUS:
                self.reply_error(cookie, EINVAL, "BLOCK_STATUS of 0 bytes")
            elif cmd == CMD_READ:
                self.reply_data(cookie, offset, b"")
            else:
                self.reply_ok(cookie)
            return
        if (offset | length) & (bs - 1):
            self._sub_block(cmd, flags, cookie, offset, length, payload)
        elif cmd == CMD_READ:
            export.read(self, cookie, offset, length, flags)
        elif cmd == CMD_WRITE:
            export.write(self, cookie, offset, payload, flags)
        elif cmd == CMD_WRITE_ZEROES:
            export.write_zeroes(self, cookie, offset, length, flags)
        elif cmd == CMD_TRIM:
            export.trim(self, cookie, offset, length, flags)
        elif cmd == CMD_CACHE:
            export.cache(self, cookie, offset, length, flags)
        else:
            self._block_status(cookie, offset, length, flags)

    def _sub_block(self, cmd, flags, cookie, offset, length, payload):
        """A request not aligned to the export's block size, from a client that negotiated none."""
        export = self.export
        bs = export.block_size
        start, stop = offset - offset % bs, -(-(offset + length) // bs) * bs
        if cmd == CMD_READ:
            export.read(_SubBlock(self, offset, offset - start, length), cookie, start, stop - start, flags)
        elif cmd == CMD_CACHE:
            export.cache(self, cookie, start, stop - start, flags)
        elif cmd == CMD_BLOCK_STATUS:
            self._block_status(cookie, offset, length, flags)
        elif cmd == CMD_WRITE:
            export.write(_SubBlock(self), cookie, offset, payload, flags)
        elif cmd == CMD_WRITE_ZEROES:
            export.write_zeroes(_SubBlock(self), cookie, offset, length, flags)
        else:
            export.trim(_SubBlock(self), cookie, offset, length, flags)

    def _block_status(self, cookie, offset, length, flags):
        if not self._meta_ok:
            self.reply_error(cookie, EINVAL, "BLOCK_STATUS without a metadata context (select base:allocation)")
            return
        bs = self.export.block_size
        start = offset - offset % bs       # asked of the export in whole blocks, the head cut off below
        try:
            extents = self.export.block_status(start, -(-(offset + length) // bs) * bs - start)
        except Exception as exc:  # a controller error is this request's error, never the loop's
            self.reply_exception(cookie, exc)
            return
        skip = offset - start
        while skip and extents:
            first_len, first_flags = extents[0]
            if first_len > skip:
                extents = [(first_len - skip, first_flags)] + extents[1:]
                break
            skip -= first_len
            extents = extents[1:]
        if not extents:
            extents = [(length, 0)]
        if flags & wire.CMD_FLAG_REQ_ONE:
            extents = [(min(extents[0][0], length), extents[0][1])]
        else:
            clipped, covered = [], 0
            for ext_len, ext_flags in extents:
                if covered >= length:
                    break
                ext_len = min(ext_len, length - covered)
                clipped.append((ext_len, ext_flags))
                covered += ext_len
            extents = clipped[: 1 << 20]
        self._send(cookie, wire.block_status_chunk(cookie, _META_CONTEXT_ID, extents))

    def _disconnect(self):
        """NBD_CMD_DISC: serve what is in flight, then close."""
        self._disc = True
        self._phase = _CLOSED
        self.transport.pause_reading()
        if not self._inflight and not self._out:
            self.transport.close()

    def _violation(self, what):
        log.warning("%s: %s; disconnecting this client", self.peer, what)
        self._phase = _CLOSED
        self.closed = True
        self._out.clear()
        self.transport.close()

    # --- replies ------------------------------------------------------------------------------
    def _send(self, cookie, *pieces):
        """Queue the final reply of ``cookie``; the front end writes it this loop turn."""
        self._inflight -= 1
        if self.closed:
            return
        size = 0
        for piece in pieces:
            size += len(piece)
        self._replied(cookie, size)
        out = self._out
        if not out:
            self.fe.mark_dirty(self)
        out.extend(pieces)
        if not self._out_big:
            for piece in pieces:
                if len(piece) >= _WRITE_ALONE:
                    self._out_big = True

    def reply_ok(self, cookie):
        self._send(cookie, _SIMPLE_OK.pack(wire.SIMPLE_REPLY_MAGIC, 0, cookie))

    def reply_error(self, cookie, error, message=""):
        if self._structured:
            self._send(cookie, wire.error_chunk(cookie, error, message))
        else:
            self._send(cookie, wire.simple_reply(cookie, error))
        log.debug("%s: cookie %#x: %s %s", self.peer, cookie, wire.ERROR_NAMES.get(error, error), message)

    def reply_exception(self, cookie, exc, message=None):
        self.reply_error(cookie, wire.nbd_error(getattr(exc, "errno", None)), message or str(exc))

    def reply_data(self, cookie, offset, data):
        if self._structured:
            if not data:
                self._send(cookie, wire.done_chunk(cookie))
                return
            head = wire.OFFSET_DATA_HEAD.pack(wire.STRUCTURED_REPLY_MAGIC, wire.REPLY_FLAG_DONE,
                                              wire.REPLY_TYPE_OFFSET_DATA, cookie, 8 + len(data), offset)
        else:
            head = _SIMPLE_OK.pack(wire.SIMPLE_REPLY_MAGIC, 0, cookie)
        self._send(cookie, head, data)

    def _on_ok(self, cookie, completion):
        if completion.error is None:
            self.reply_ok(cookie)
        else:
            self.reply_exception(cookie, completion.error)

    def _on_write(self, cookie, completion):
        """Completion of a fast-path WRITE: the common case without a call per layer."""
        if completion.error is not None or self.closed:
            self._on_ok(cookie, completion)
            return
        self._inflight -= 1
        cost = self._costs.pop(cookie, 0)
        if type(cost) is list:           # a reused cookie: the general bookkeeping
            self._costs[cookie] = cost
            self._replied(cookie, 16)
        else:
            self._out_cost += cost
        out = self._out
        if not out:
            self.fe.mark_dirty(self)
        out.append(_SIMPLE_OK.pack(_SIMPLE_MAGIC, 0, cookie))

    def _on_read(self, cookie, offset, completion):
        if completion.error is not None:
            self.reply_exception(cookie, completion.error)
        elif self._structured or self.closed:
            self.reply_data(cookie, offset, completion.data)
        else:
            self._inflight -= 1
            cost = self._costs.pop(cookie, 0)
            if type(cost) is list:           # a reused cookie: the general bookkeeping
                self._costs[cookie] = cost
                self._replied(cookie, 0)
            else:
                self._out_cost += cost
            data = completion.data
            out = self._out
            if not out:
                self.fe.mark_dirty(self)
            out.append(_SIMPLE_OK.pack(_SIMPLE_MAGIC, 0, cookie))
            out.append(data)
            if len(data) >= _WRITE_ALONE:
                self._out_big = True

    def ok_callback(self, cookie):
        """A controller completion callback that answers ``cookie`` with success or the error."""
        return functools.partial(self._on_ok, cookie)

    def read_callback(self, cookie, offset):
        """A controller completion callback that answers ``cookie`` with the data read."""
        return functools.partial(self._on_read, cookie, offset)

    def flush_output(self):
        """Write every queued reply; called by the front end once per loop turn.

        Small pieces are joined into one write; a large one (READ data) is written on its own,
        so it is never copied into a join. The replies' charge is released once the transport
        takes them below its high-water mark, or later, when it drains (``resume_writing``).
        """
        out = self._out
        if not out or self.closed:
            return
        write = self.transport.write
        if len(out) == 1:
            write(out[0])
        elif not self._out_big:
            write(b"".join(out))
        else:
            small = []
            for piece in out:
                if len(piece) >= _WRITE_ALONE:
                    if small:
                        write(b"".join(small))
                        small = []
                    write(piece)
                else:
                    small.append(piece)
            if small:
                write(b"".join(small) if len(small) > 1 else small[0])
            self._out_big = False
        out.clear()
        cost, self._out_cost = self._out_cost, 0
        if "writing" in self._paused:
            self._unsent += cost
        elif cost:
            self._release(cost)
        if self._disc and not self._inflight:
            self.transport.close()

    def _pause(self, why):
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused.add(why)

    def _resume(self, why):
        self._paused.discard(why)
        if not self._paused and not self.closed and not self._disc:
            self.transport.resume_reading()

    def shutdown(self):
        """Server stopping: close once nothing is in flight (new requests get ESHUTDOWN meanwhile)."""
        if self._phase != _TRANSMISSION or not self._inflight:
            self.flush_output()          # replies queued this turn still go out
            self._phase = _CLOSED
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        else:
            self._disc = True


class _SubBlock:
    """The connection as an export sees it for one request that is not aligned to the export's block.

    A READ is asked of the export in whole blocks and its reply cut to the bytes the client asked
    for (``offset``, ``skip`` bytes into the blocks, ``length`` bytes). A WRITE, TRIM or
    WRITE_ZEROES goes to the export as it came: ``sub_block`` makes the front end submit it to the
    controller as a sub-block request, which reads, modifies and writes the partial blocks in
    sequence. Every reply goes to the connection under the client's cookie.
    """

    __slots__ = ("conn", "offset", "skip", "length")
    sub_block = True

    def __init__(self, conn, offset=0, skip=0, length=0):
        self.conn, self.offset, self.skip, self.length = conn, offset, skip, length

    def _pause(self, why):
        self.conn._pause(why)

    def _resume(self, why):
        self.conn._resume(why)

    def ok_callback(self, cookie):
        return self.conn.ok_callback(cookie)

    def read_callback(self, cookie, offset):
        return functools.partial(self._on_read, cookie)

    def _on_read(self, cookie, completion):
        if completion.error is not None:
            self.conn.reply_exception(cookie, completion.error)
        else:
            self.reply_data(cookie, self.offset, completion.data)

    def reply_data(self, cookie, offset, data):
        self.conn.reply_data(cookie, self.offset, bytes(memoryview(data)[self.skip:self.skip + self.length]))

    def reply_ok(self, cookie):
        self.conn.reply_ok(cookie)

    def reply_error(self, cookie, error, message=""):
        self.conn.reply_error(cookie, error, message)

    def reply_exception(self, cookie, exc, message=None):
        self.conn.reply_exception(cookie, exc, message)


_OPTION_HANDLERS = {
    wire.OPT_EXPORT_NAME: NbdConnection._opt_export_name,
    wire.OPT_ABORT: NbdConnection._opt_abort,
    wire.OPT_LIST: NbdConnection._opt_list,
    wire.OPT_STARTTLS: NbdConnection._opt_starttls,
    wire.OPT_INFO: NbdConnection._opt_info_go,
    wire.OPT_GO: NbdConnection._opt_info_go,
    wire.OPT_STRUCTURED_REPLY: NbdConnection._opt_structured_reply,
    wire.OPT_LIST_META_CONTEXT: NbdConnection._opt_meta_context,
    wire.OPT_SET_META_CONTEXT: NbdConnection._opt_meta_context,
}
