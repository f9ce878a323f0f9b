"""The NBD transmission phase: parse each request, validate it, translate it, dispatch it.

Owns what a connection does with requests: cutting them out of the receive buffer (the
``nbdwire`` kernel), validating each one once against the export it negotiated (``_validate``,
as nbdkit's ``validate_request``), translating it once into the controller's own opcode and
flags (``CONTROLLER_OPS``, ``CONTROLLER_FLAGS``), and queueing it on the controller (directly for
READ/WRITE of a plain LUN export, through its export otherwise); and the connection's memory
budget. Below this module no one sees an NBD number. It never executes I/O and never blocks the
loop.

Memory: every request is charged, from the moment it is parsed until its reply has left the
transport's buffer, against the connection's budget and the front end's total (a READ or WRITE
its length, anything else ``_SMALL_COST`` or its reply's size). A request that does not fit stays
unparsed in the receive buffer and the connection stops reading until enough is released; a
client that does not read its replies keeps them charged, so it stops itself and no one else. A
connection holding nothing may always take one request (up to the 64 MiB maximum) if the total
allows it, or if nothing at all is charged.

Protocol notes (doc/proto.md):
- a client that negotiated no block size may send requests of any alignment: READ, CACHE and
  BLOCK_STATUS are widened to whole blocks here, WRITE, TRIM and WRITE_ZEROES go to the
  controller as sub-block requests (it reads, modifies and writes the partial blocks in
  sequence); for a client that did ask, unaligned I/O is EINVAL;
- errors: unknown command or flag and unaligned I/O (see above) -> EINVAL; past the end ->
  ENOSPC for writes, EINVAL otherwise; writes to a read-only export -> EPERM; while stopping ->
  ESHUTDOWN; a READ above 64 MiB -> EOVERFLOW with structured replies (EINVAL without); a WRITE
  above 64 MiB has its payload skipped and gets EINVAL;
- a bad request magic is a protocol violation: that client is disconnected.
"""
from __future__ import annotations

import functools
import logging

from splitpoint.firmware.errors import QueueFullError, ShuttingDownError
from splitpoint.firmware.frontend.nbd.proto import (
    MAX_REQUEST, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE, NBD_CMD_DISC, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO,
    NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE, NBD_CMD_FLAG_REQ_ONE, NBD_CMD_FLUSH, NBD_CMD_NAMES,
    NBD_CMD_READ, NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES, NBD_EINVAL, NBD_ENOSPC, NBD_EOVERFLOW,
    NBD_EPERM, NBD_ESHUTDOWN, NBD_META_BASE_ALLOCATION, NBD_META_DIRTY_BITMAP, NBD_REQUEST_MAGIC, NBD_STATE_DIRTY,
    REQUEST,
)
from splitpoint.firmware.frontend.nbd.handshake import CLOSED, TRANSMISSION
from splitpoint.firmware.frontend.nbd.replies import NBD_STATES, SubBlock, block_status_chunk
from splitpoint.firmware.requests import FLAG_FAST_ZERO, FLAG_FUA, FLAG_NO_HOLE, Op
from splitpoint.pyx import select as _select_kernel

log = logging.getLogger("splitpoint.nbd")

#: requests in flight on one connection before it stops reading (and resumes below _RESUME)
_PAUSE_INFLIGHT = 1024
_RESUME_INFLIGHT = 256
#: what a request other than READ or WRITE is charged until its reply is out (or its reply's size)
_SMALL_COST = 4096
#: WRITE payloads at least this large go to the controller as slices of the receive buffer (no
#: copy; the buffer is then retired); smaller ones are copied so a long-lived payload (an async
#: mirror queue) never pins a whole buffer
LEND_MIN = 128 << 10

_REQUEST = REQUEST
_HEADER = REQUEST.size   # bytes of a request before its payload
_kernel = _select_kernel("nbdwire")
_scan = _kernel.scan
# the kernel reads headers with its own copy of the layout (a kernel imports nothing from above it)
if (_kernel.REQUEST_MAGIC, _kernel.HEADER, _kernel.CMD_WRITE) != (NBD_REQUEST_MAGIC, REQUEST.size, NBD_CMD_WRITE):
    raise ImportError("the nbdwire kernel's request layout differs from nbd.proto's")

#: NBD command -> the controller's opcode; DISC and BLOCK_STATUS are answered here, never queued
CONTROLLER_OPS = {
    NBD_CMD_READ: Op.READ, NBD_CMD_WRITE: Op.WRITE, NBD_CMD_FLUSH: Op.FLUSH, NBD_CMD_TRIM: Op.TRIM,
    NBD_CMD_CACHE: Op.CACHE, NBD_CMD_WRITE_ZEROES: Op.WRITE_ZEROES,
}
#: NBD command flag -> the controller's request flag; DF and REQ_ONE shape the reply and stop here
_FLAG_PAIRS = ((NBD_CMD_FLAG_FUA, FLAG_FUA), (NBD_CMD_FLAG_NO_HOLE, FLAG_NO_HOLE),
               (NBD_CMD_FLAG_FAST_ZERO, FLAG_FAST_ZERO))
_NBD_FLAGS = (NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE
              | NBD_CMD_FLAG_FAST_ZERO)
#: a validated request's NBD flag word (a subset of _NBD_FLAGS) -> the controller's flags, by index
CONTROLLER_FLAGS = tuple(sum(ours for theirs, ours in _FLAG_PAIRS if word & theirs) for word in range(_NBD_FLAGS + 1))

_OP_READ = int(Op.READ)
_OP_WRITE = int(Op.WRITE)
_WRITE_CMDS = (NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES)



#: changed-block map states (changed or not) -> qemu:dirty-bitmap flags
_DIRTY_STATES = {False: 0, True: NBD_STATE_DIRTY}


def _clip_extents(extents, skip: int, length: int, req_one: int) -> list:
    """``extents`` (length, state) of whole blocks, cut to [skip, skip+length) as BLOCK_STATUS answers."""
    while skip and extents:
        first_len, first_flags = extents[0]
        if first_len > skip:
            extents = [(first_len - skip, first_flags)] + extents[1:]
            break
        skip -= first_len
        extents = extents[1:]
    if not extents:
        return [(length, 0)]
    if req_one:
        return [(min(extents[0][0], length), extents[0][1])]
    clipped, covered = [], 0
    for ext_len, ext_flags in extents:
        if covered >= length:
            break
        ext_len = min(ext_len, length - covered)
        clipped.append((ext_len, ext_flags))
        covered += ext_len
    return clipped[: 1 << 20]

class Transmission:
    """The transmission phase of ``NbdConnection`` (its state lives on the connection)."""

    def _parse_requests(self, buf, pos, n):
        """Every complete request in ``buf[pos:n]`` that the memory budget admits; READ and WRITE
        of a LUN take a fast path.

        ``nbdwire.scan`` cuts the complete requests out of the buffer in one call (small WRITE
        payloads copied, large ones lent as slices of the buffer, which is then retired); what
        it leaves to this method is a bad magic or an oversized WRITE at the position it stopped.
        A request the budget does not admit ends parsing at its own position (it is scanned again
        once room frees). The fast path takes only requests ``_validate`` would pass (its checks,
        inlined: flags, alignment, bounds, not stopping, nothing held back by a full ring),
        translates them with the same tables and goes straight to ``ctl.submit`` with a tagged
        callback (no Completion and no partial per request). Anything it
        does not take goes through ``_request``.
        """
        request = self._request
        fast = self._fast
        fe = self.fe
        if fast is not None and not fe.stopping and not fe.backlogged():
            lun, submit, on_write, on_read, wmask, rmask, bsmask, size = fast
        else:
            lun = None
        costs = self._costs
        client_bytes, total_bytes = fe.client_bytes, fe.total_bytes
        # the charges, kept in locals over the fast path and written back before anything else runs
        held, all_held = self._held, fe.held
        header, write_cmd, ctl_flags = _HEADER, NBD_CMD_WRITE, CONTROLLER_FLAGS   # locals: read per request
        while True:
            requests, _stop, want = _scan(buf, pos, n, LEND_MIN, MAX_REQUEST)
            for cmd, flags, cookie, offset, length, payload in requests:
                here = pos
                pos += header + length if cmd == write_cmd else header
                if cmd != NBD_CMD_DISC:     # DISC gets no reply and holds nothing
                    cost = length if cmd <= write_cmd else _SMALL_COST
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
                if (lun is not None and cmd <= write_cmd and not (offset | length) & bsmask and length
                        and offset + length <= size):
                    if cmd == write_cmd:
                        if length >= LEND_MIN:
                            self._lent = True
                        if not flags & wmask:
                            self._inflight += 1
                            try:
                                submit(lun, _OP_WRITE, offset, length, payload, ctl_flags[flags], None,
                                       (on_write, cookie, 0))
                                continue
                            except (QueueFullError, ShuttingDownError):
                                self._inflight -= 1
                                lun = None
                    elif not flags & rmask and length <= MAX_REQUEST:
                        self._inflight += 1
                        try:
                            submit(lun, _OP_READ, offset, length, None, 0, None, (on_read, cookie, offset))
                            continue
                        except (QueueFullError, ShuttingDownError):
                            self._inflight -= 1
                            lun = None
                elif cmd == write_cmd and length >= LEND_MIN:
                    self._lent = True
                self._held, fe.held = held, all_held
                request(cmd, flags, cookie, offset, length, payload)   # may reply at once (and charge)
                held, all_held = self._held, fe.held
                if self._phase != TRANSMISSION:
                    return n
            self._held, fe.held = held, all_held
            if want:
                if want >= LEND_MIN and not self._fits(want - _HEADER):
                    self._block(want - _HEADER, want)   # a large WRITE's payload is received once it fits
                else:
                    self._want = want
                return pos
            # a bad magic or an oversized WRITE at pos
            magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(buf, pos)
            if magic != NBD_REQUEST_MAGIC:
                self._violation(f"bad request magic {magic:#x}")
                return n
            start = pos + _HEADER
            self._inflight += 1
            self._charge(cookie, _SMALL_COST)   # its payload is skipped, never held
            skip = min(length, n - start)
            done = functools.partial(self.reply_error, cookie, NBD_EINVAL,
                                     f"WRITE of {length} bytes is over the {MAX_REQUEST}-byte limit")
            if length > skip:
                self._discard, self._discard_done, self._want = length - skip, done, _HEADER
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

    def _block(self, cost, want=_HEADER):
        """The next request (charged ``cost``, ``want`` bytes from the parse position) does not
        fit: stop reading until room frees."""
        self._blocked = cost
        self._want = want
        self.fe.wait_for_room(self)
        self.pause("budget")

    def try_unblock(self):
        """Room was released somewhere: resume reading if the waiting request now fits."""
        cost = self._blocked
        if cost is None or not self._fits(cost, _RESUME_INFLIGHT):
            return
        fe = self.fe
        self._blocked = None
        fe.stop_waiting(self)
        self.resume("budget")
        fe.loop.call_soon(self._parse_buffered)

    def _parse_buffered(self):
        """Room freed: parse the requests received before reading stopped (they wait in the buffer)."""
        if self.closed or self._blocked is not None or self._discard or self._phase != TRANSMISSION:
            return
        if self._end - self._start >= self._want:
            self._process()

    def _enter_transmission(self, name, export):
        self._stop_handshake_timer()
        self.export = export
        self._meta_ok = self._meta_ok and self._meta_export == name
        fua = 0 if export.read_only else NBD_CMD_FLAG_FUA
        self._allowed = {
            NBD_CMD_READ: fua | (NBD_CMD_FLAG_DF if self._structured else 0),
            NBD_CMD_WRITE: fua,
            NBD_CMD_FLUSH: fua,
            NBD_CMD_TRIM: fua,
            NBD_CMD_CACHE: fua,
            NBD_CMD_WRITE_ZEROES: fua | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
            NBD_CMD_BLOCK_STATUS: fua | NBD_CMD_FLAG_REQ_ONE,
        }
        self._fast_lun = None if export.read_only else getattr(export, "fast_lun", None)
        self._bsmask = export.block_size - 1
        self._size = export.size
        if self._fast_lun is not None:
            # tagged callbacks (fn, cookie, offset): the controller calls fn(cookie, offset, error, data)
            self._fast = (self._fast_lun, self.fe.ctl.submit, self._wrote, self._read_done,
                          ~self._allowed[NBD_CMD_WRITE], ~self._allowed[NBD_CMD_READ], self._bsmask, self._size)
        self._phase = TRANSMISSION
        self._want = _HEADER
        log.debug("%s: transmission on export %r", self.peer, export.name)

    # --- transmission ----------------------------------------------------------------------
    def _validate(self, cmd, flags, offset, length):
        """None if the request may be served, else (NBD error, message): every rule, in one place.

        As nbdkit's ``validate_request``: a known command, flags valid for it on this export, the
        server not stopping, no write to a read-only export, FLUSH without a range, a READ within
        the size limit, the range inside the export, alignment unless the client negotiated no
        block size, and BLOCK_STATUS only with a range and a selected metadata context.
        """
        allowed = self._allowed.get(cmd)
        if allowed is None:
            return NBD_EINVAL, f"unknown command {cmd}"
        export = self.export
        name = NBD_CMD_NAMES[cmd]
        if self.fe.stopping:
            return NBD_ESHUTDOWN, "server is shutting down"
        if export.read_only and cmd in _WRITE_CMDS:
            return NBD_EPERM, f"{name} on read-only export {export.name!r}"
        if flags & ~allowed:
            return NBD_EINVAL, f"command flags {flags & ~allowed:#x} are not valid for {name}"
        if cmd == NBD_CMD_FLUSH:
            return (NBD_EINVAL, "FLUSH must have offset and length 0") if offset or length else None
        if cmd == NBD_CMD_READ and length > MAX_REQUEST:
            return (NBD_EOVERFLOW if self._structured else NBD_EINVAL,
                    f"READ of {length} bytes is over the {MAX_REQUEST}-byte limit")
        size = export.size
        if offset > size or length > size - offset:
            return (NBD_ENOSPC if cmd in (NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES) else NBD_EINVAL,
                    f"{name} [{offset}, +{length}) is past the end of {export.name!r} ({size} bytes)")
        bs = export.block_size
        if (offset % bs or length % bs) and not self._any_alignment:
            return NBD_EINVAL, f"{name} [{offset}, +{length}) is not aligned to the minimum block size {bs}"
        if cmd == NBD_CMD_BLOCK_STATUS:
            if length == 0:
                return NBD_EINVAL, "BLOCK_STATUS of 0 bytes"
            if not self._meta_ok:
                return NBD_EINVAL, "BLOCK_STATUS without a metadata context (select base:allocation)"
        return None

    def _request(self, cmd, flags, cookie, offset, length, payload):
        """Validate one request, translate it into the controller's opcode and flags, dispatch it."""
        if cmd == NBD_CMD_DISC:
            self._disconnect()
            return
        self._inflight += 1
        refused = self._validate(cmd, flags, offset, length)
        if refused is not None:
            self.reply_error(cookie, *refused)
            return
        if cmd == NBD_CMD_BLOCK_STATUS:
            self._block_status(cookie, offset, length, flags)
            return
        op, flags = CONTROLLER_OPS[cmd], CONTROLLER_FLAGS[flags]
        export = self.export
        if op == Op.FLUSH:
            export.flush(self, cookie, flags)
        elif length == 0:
            if op == Op.READ:
                self.reply_data(cookie, offset, b"")
            else:
                self.reply_ok(cookie)
        elif (offset | length) & (export.block_size - 1):
            self._sub_block(op, flags, cookie, offset, length, payload)
        elif op == Op.READ:
            export.read(self, cookie, offset, length, flags)
        elif op == Op.WRITE:
            export.write(self, cookie, offset, payload, flags)
        elif op == Op.WRITE_ZEROES:
            export.write_zeroes(self, cookie, offset, length, flags)
        elif op == Op.TRIM:
            export.trim(self, cookie, offset, length, flags)
        else:
            export.cache(self, cookie, offset, length, flags)

    def _sub_block(self, op, flags, cookie, offset, length, payload):
        """A request not aligned to the export's block size, from a client that negotiated none."""
        export = self.export
        bs = export.block_size
        start, stop = offset - offset % bs, -(-(offset + length) // bs) * bs
        if op == Op.READ:
            export.read(SubBlock(self, offset, offset - start, length), cookie, start, stop - start, flags)
        elif op == Op.CACHE:
            export.cache(self, cookie, start, stop - start, flags)
        elif op == Op.WRITE:
            export.write(SubBlock(self), cookie, offset, payload, flags)
        elif op == Op.WRITE_ZEROES:
            export.write_zeroes(SubBlock(self), cookie, offset, length, flags)
        else:
            export.trim(SubBlock(self), cookie, offset, length, flags)

    def _block_status(self, cookie, offset, length, flags):
        """A validated BLOCK_STATUS: one chunk per selected meta context (base:allocation from the
        export's allocation states, qemu:dirty-bitmap:<backup> from its changed-block map)."""
        bs = self.export.block_size
        start = offset - offset % bs       # asked of the export in whole blocks, the head cut off below
        span = -(-(offset + length) // bs) * bs - start
        chunks = []
        contexts = self._meta_contexts
        for i, (ctx_id, ctx) in enumerate(contexts):
            try:
                if ctx == NBD_META_BASE_ALLOCATION:
                    states = NBD_STATES
                    extents = self.export.block_status(start, span)
                else:
                    states = _DIRTY_STATES
                    extents = self.export.changed_status(ctx[len(NBD_META_DIRTY_BITMAP):], start, span)
            except Exception as exc:  # a controller error is this request's error, never the loop's
                self.reply_exception(cookie, exc)
                return
            extents = _clip_extents(extents, offset - start, length, flags & NBD_CMD_FLAG_REQ_ONE)
            chunks.append(block_status_chunk(cookie, ctx_id, [(n, states[f]) for n, f in extents],
                                             done=i == len(contexts) - 1))
        self._send(cookie, *chunks)

    def _disconnect(self):
        """NBD_CMD_DISC: serve what is in flight, then close."""
        self._disc = True
        self._phase = CLOSED
        self.transport.pause_reading()
        if not self._inflight and not self._out:
            self.transport.close()
