"""One NBD client's connection: the asyncio protocol that ties the phases together.

Owns the receive buffer (``BufferedProtocol``: recv_into, no allocation per read), the phase a
client is in, reading paused and resumed for a reason, and shutdown. What each phase does with
the bytes is its own module's: ``handshake`` (newstyle negotiation), ``transmission`` (requests:
parse, validate, translate, dispatch, and the memory budget), ``replies`` (what goes back). The
connection never executes I/O itself and never blocks the loop.

The contract with the front end (``service.FrontEnd``), both ways and nothing else:

- the connection uses the front end's ``ctl``, ``loop``, ``exports``, ``stopping``,
  ``handshake_timeout``, its budget (``client_bytes``, ``total_bytes``, ``held``, ``release``,
  ``wait_for_room``, ``stop_waiting``), ``attach``/``detach``, ``submit``, ``backlogged`` and
  ``mark_dirty``;
- the front end uses the connection's ``pause(why)``/``resume(why)`` (reading stops while any
  reason holds), ``inflight``, ``try_unblock``, ``flush_output``, ``shutdown``, ``sub_block``
  and ``transport``.
"""
from __future__ import annotations

import asyncio
import logging
import socket

import numpy as np

from splitpoint.firmware.frontend.nbd.proto import (
    GREETING, NBD_FLAG_FIXED_NEWSTYLE, NBD_FLAG_NO_ZEROES, NBD_IHAVEOPT, NBD_MAGIC,
)
from splitpoint.firmware.frontend.nbd.handshake import CLIENT_FLAGS, CLOSED, TRANSMISSION, Handshake
from splitpoint.firmware.frontend.nbd.replies import Replies
from splitpoint.firmware.frontend.nbd.transmission import LEND_MIN, Transmission

log = logging.getLogger("splitpoint.nbd")

#: receive buffer per connection, and the free room below which it is compacted before a recv
_BUF_SIZE = 512 << 10
_MIN_FREE = 64 << 10
#: send buffer asked for on a Unix socket (see _widen_send_buffer)
_SEND_BUFFER = 4 << 20
#: where skipped bytes (oversized requests or options) are received, shared by every connection
_SCRATCH_SIZE = 256 << 10
_SCRATCH_VIEW = memoryview(bytearray(_SCRATCH_SIZE))


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


class NbdConnection(Handshake, Transmission, Replies, asyncio.BufferedProtocol):
    """One NBD client, from greeting to disconnect."""

    #: what the front end asks the controller for this connection's writes: aligned requests only
    sub_block = False

    def __init__(self, frontend):
        self.fe = frontend
        self.transport = None
        self.peer = "?"
        self.export = None
        self._phase = CLIENT_FLAGS
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
        self._meta_contexts = ()      # (context id, name) of each meta context selected, in id order
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
        self._held = 0                 # bytes charged (see ``transmission``): in flight, queued, unsent
        self._costs = {}               # cookie -> its charge (a list when a client reuses a cookie in flight)
        self._out_cost = 0             # the charge of the replies in _out
        self._unsent = 0               # the charge of replies written while the transport was full
        self._blocked = None           # the charge of the request waiting for room, while reading is stopped
        self._handshake_timer = None
        self.tls = False               # NBD_OPT_STARTTLS succeeded: the transport is TLS

    # --- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        _widen_send_buffer(transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else (peer or "unix")
        self.fe.attach(self)
        transport.write(GREETING.pack(NBD_MAGIC, NBD_IHAVEOPT,
                                           NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES))
        if self.fe.handshake_timeout:
            self._handshake_timer = self.fe.loop.call_later(self.fe.handshake_timeout, self._handshake_expired)
        log.debug("%s: connected", self.peer)

    def connection_lost(self, exc):
        self.closed = True
        self._phase = CLOSED
        self._fast = None
        self._out.clear()
        self.fe.detach(self)
        self._stop_handshake_timer()
        self._blocked = None
        self._costs.clear()
        held, self._held, self._out_cost, self._unsent = self._held, 0, 0, 0
        if held:
            self.fe.release(held)
        if self._inflight:
            log.info("%s: client went away with %d request(s) in flight", self.peer, self._inflight)
        log.debug("%s: disconnected (%s)", self.peer, exc or "clean")

    def pause_writing(self):
        self.pause("writing")

    def resume_writing(self):
        """The client drained its replies below the low-water mark: their charge is released."""
        unsent, self._unsent = self._unsent, 0
        self.resume("writing")
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
        if self._want >= LEND_MIN:
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
        if self._phase == TRANSMISSION:
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


    def _violation(self, what):
        log.warning("%s: %s; disconnecting this client", self.peer, what)
        self._phase = CLOSED
        self.closed = True
        self._out.clear()
        self.transport.close()


    @property
    def inflight(self) -> int:
        """Requests parsed and not yet answered."""
        return self._inflight

    def pause(self, why: str):
        """Stop reading from the client while ``why`` holds (backlog, budget, writing)."""
        if not self._paused and not self.closed:
            self.transport.pause_reading()
        self._paused.add(why)

    def resume(self, why: str):
        """``why`` no longer holds: reading resumes once no other reason does."""
        self._paused.discard(why)
        if not self._paused and not self.closed and not self._disc:
            self.transport.resume_reading()

    def shutdown(self):
        """Server stopping: close once nothing is in flight (new requests get ESHUTDOWN meanwhile)."""
        if self._phase != TRANSMISSION or not self._inflight:
            self.flush_output()          # replies queued this turn still go out
            self._phase = CLOSED
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        else:
            self._disc = True

