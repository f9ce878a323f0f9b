"""The NBD handshake: fixed newstyle negotiation, options, the export list and meta contexts.

Owns everything a connection does between the greeting and the transmission phase, and the
handshake's deadline. It only answers options and asks the export table which exports exist;
it never queues a request on the controller.

Protocol notes (doc/proto.md):
- the server offers NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES and drops a client that sets
  unknown client flags;
- options: EXPORT_NAME, ABORT, LIST, INFO, GO (INFO_EXPORT, INFO_BLOCK_SIZE always; INFO_NAME and
  INFO_DESCRIPTION when asked), STRUCTURED_REPLY, LIST_META_CONTEXT and SET_META_CONTEXT for
  ``base:allocation`` and the changed-block maps ``qemu:dirty-bitmap:<lun>.t<id>`` of the export
  (queries ``base:``, ``qemu:`` and ``qemu:dirty-bitmap:`` list them all); anything else gets
  NBD_REP_ERR_UNSUP and the handshake goes on;
- a client that negotiated no block size (NBD_OPT_EXPORT_NAME, or NBD_OPT_GO without asking for
  NBD_INFO_BLOCK_SIZE) may send requests of any alignment (see ``transmission``);
- a handshake that has not reached transmission after the front end's handshake timeout is closed;
- a bad option magic is a protocol violation: that client is disconnected.
"""
from __future__ import annotations

import functools
import logging
import struct

from splitpoint.firmware.frontend.nbd.proto import (
    EXPORT_NAME_REPLY, INFO_BLOCK_SIZE_PAYLOAD, INFO_EXPORT_PAYLOAD, MAX_OPTION, MAX_REQUEST,
    NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_C_KNOWN, NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_SEND_CACHE,
    NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FLUSH, NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM,
    NBD_FLAG_SEND_WRITE_ZEROES,
    NBD_FLAG_C_NO_ZEROES, NBD_IHAVEOPT, NBD_INFO_BLOCK_SIZE, NBD_INFO_DESCRIPTION, NBD_INFO_EXPORT,
    NBD_INFO_NAME, NBD_MAX_STRING, NBD_META_BASE_ALLOCATION, NBD_META_DIRTY_BITMAP, NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME, NBD_OPT_GO,
    NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT, NBD_OPT_STARTTLS,
    NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_INVALID, NBD_REP_ERR_SHUTDOWN, NBD_REP_ERR_TOO_BIG,
    NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_UNKNOWN, NBD_REP_ERR_UNSUP, NBD_REP_INFO, NBD_REP_MAGIC,
    NBD_REP_META_CONTEXT, NBD_REP_SERVER, OPTION, OPTION_REPLY,
)

log = logging.getLogger("splitpoint.nbd")

#: the phases of a connection, in order (STARTING_TLS: between STARTTLS's ACK and the TLS handshake's end)
CLIENT_FLAGS, OPTIONS, TRANSMISSION, CLOSED, STARTING_TLS = range(5)
#: the id of base:allocation; changed-block maps get the ids after it, in the order they were asked for
META_CONTEXT_ID = 1

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


def transmission_flags(export, structured: bool) -> int:
    """The transmission flags an export is offered with (what a client may send it)."""
    flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE
    if structured:
        flags |= NBD_FLAG_SEND_DF
    if export.read_only:
        flags |= NBD_FLAG_READ_ONLY
    else:
        flags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO
    return flags


def option_reply(option: int, reply: int, payload: bytes = b"") -> bytes:
    """One fixed-newstyle option reply."""
    return OPTION_REPLY.pack(NBD_REP_MAGIC, option, reply, len(payload)) + payload


class Handshake:
    """The handshake phase of ``NbdConnection`` (its state lives on the connection)."""

    # --- parsing -------------------------------------------------------------------------
    def _parse(self, buf, pos: int, n: int) -> int:
        """Handle every complete message in ``buf[pos:n]``; return where parsing stopped."""
        while True:
            phase = self._phase
            if phase == TRANSMISSION:
                return self._parse_requests(buf, pos, n)
            if phase == STARTING_TLS:
                return pos     # what follows is the TLS handshake's, once the transport is upgraded
            if phase == OPTIONS:
                if n - pos < 16:
                    self._want = 16
                    return pos
                magic, opt, optlen = OPTION.unpack_from(buf, pos)
                if magic != NBD_IHAVEOPT:
                    self._violation(f"bad option magic {magic:#x}")
                    return n
                start = pos + 16
                if optlen > MAX_OPTION:
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
            if phase == CLIENT_FLAGS:
                if n - pos < 4:
                    self._want = 4
                    return pos
                (flags,) = _U32.unpack_from(buf, pos)
                pos += 4
                if flags & ~NBD_FLAG_C_KNOWN:
                    self._violation(f"unknown client flags {flags:#x}")
                    return n
                self._no_zeroes = bool(flags & NBD_FLAG_C_NO_ZEROES)
                self._phase = OPTIONS
                continue
            return n  # closed or disconnecting: ignore whatever follows

    # --- handshake timeout -------------------------------------------------------------------
    def _stop_handshake_timer(self):
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_expired(self):
        self._handshake_timer = None
        if self.closed or self._phase not in (CLIENT_FLAGS, OPTIONS, STARTING_TLS):
            return
        log.warning("%s: handshake not finished within %g s; closing this connection",
                    self.peer, self.fe.handshake_timeout)
        self._phase = CLOSED
        self.closed = True
        self.transport.close()

    # --- handshake -----------------------------------------------------------------------
    def _opt_reply(self, opt, reply, payload=b""):
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "replace")[: NBD_MAX_STRING]
        self.transport.write(option_reply(opt, reply, payload))

    def _option_too_big(self, opt, optlen):
        if opt == NBD_OPT_EXPORT_NAME:
            self._violation(f"NBD_OPT_EXPORT_NAME of {optlen} bytes")
            return
        known = opt in (NBD_OPT_ABORT, NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_INFO, NBD_OPT_GO,
                        NBD_OPT_STRUCTURED_REPLY, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT)
        self._opt_reply(opt, NBD_REP_ERR_TOO_BIG if known else NBD_REP_ERR_UNSUP,
                        f"option {opt} with {optlen} bytes of data is over the {MAX_OPTION}-byte limit")

    def _option(self, opt, data: bytes):
        if self.fe.stopping and opt not in (NBD_OPT_ABORT, NBD_OPT_EXPORT_NAME):
            self._opt_reply(opt, NBD_REP_ERR_SHUTDOWN, "server is shutting down")
            return
        if self.fe.tls.required and not self.tls and opt not in (NBD_OPT_STARTTLS, NBD_OPT_ABORT):
            if opt == NBD_OPT_EXPORT_NAME:   # no error reply exists for it: the client is dropped
                self._violation("NBD_OPT_EXPORT_NAME without TLS on a server that requires TLS")
                return
            self._opt_reply(opt, NBD_REP_ERR_TLS_REQD,
                            "this server requires TLS: send NBD_OPT_STARTTLS first (an nbds:// URI)")
            return
        handler = _OPTION_HANDLERS.get(opt)
        if handler is None:
            self._opt_reply(opt, NBD_REP_ERR_UNSUP, f"option {opt} is not supported by this server")
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
        reply = EXPORT_NAME_REPLY.pack(export.size, transmission_flags(export, self._structured))
        if not self._no_zeroes:
            reply += bytes(124)
        self.transport.write(reply)
        self._any_alignment = True   # this client cannot have learnt a block size
        self._enter_transmission(name, export)

    def _opt_abort(self, opt, data):
        self._opt_reply(opt, NBD_REP_ACK)
        self._phase = CLOSED
        self.transport.close()

    def _opt_list(self, opt, data):
        if data:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "NBD_OPT_LIST carries no data")
            return
        for name, description in self.fe.exports.listing():
            raw = name.encode()
            self._opt_reply(opt, NBD_REP_SERVER, _U32.pack(len(raw)) + raw + description.encode("utf-8", "replace"))
        self._opt_reply(opt, NBD_REP_ACK)

    def _opt_starttls(self, opt, data):
        ctx = self.fe.tls_context
        if ctx is None:
            self._opt_reply(opt, NBD_REP_ERR_UNSUP, "TLS is off on this server (splitpoint serve --tls=on)")
            return
        if data:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS carries no data")
            return
        if self.tls:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "TLS is already started on this connection")
            return
        self._opt_reply(opt, NBD_REP_ACK)
        self._phase = STARTING_TLS
        self.transport.pause_reading()   # the client's TLS hello must reach the TLS layer, not this buffer
        self.fe.loop.create_task(self._upgrade(ctx))

    async def _upgrade(self, ctx):
        """Put TLS under this connection; the option haggling then starts again inside it."""
        if self._end != self._start:
            # the client sent more before our ACK: doc/proto.md forbids it, and those bytes belong to TLS
            self._violation("bytes after NBD_OPT_STARTTLS before the server's reply")
            return
        try:
            transport = await self.fe.loop.start_tls(self.transport, self, ctx, server_side=True,
                                                     ssl_handshake_timeout=self.fe.handshake_timeout or None)
        except (OSError, ValueError) as exc:   # ssl.SSLError, ConnectionError and TimeoutError are OSErrors
            if not self.closed:
                log.warning("%s: TLS handshake failed: %s; disconnecting this client", self.peer, exc)
                self._phase = CLOSED
                self.closed = True
                self.transport.close()
            return
        if self.closed or transport is None:
            return
        self.transport = transport
        self.tls = True
        # fresh state: nothing negotiated before TLS counts (doc/proto.md, STARTTLS)
        self._structured = False
        self._meta_export, self._meta_ok = None, False
        self._phase = OPTIONS
        self._want = 16
        peer_cert = transport.get_extra_info("peercert")
        log.debug("%s: TLS started%s", self.peer, f" (client certificate {peer_cert.get('subject')})"
                  if peer_cert else "")
        if self._end - self._start >= self._want:
            self._process()   # options that came inside TLS before start_tls returned (asyncio's loop)

    def _opt_structured_reply(self, opt, data):
        if data:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data")
            return
        self._structured = True
        self._opt_reply(opt, NBD_REP_ACK)

    def _opt_info_go(self, opt, data):
        if len(data) < 6:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "option data shorter than 6 bytes")
            return
        (namelen,) = _U32.unpack_from(data, 0)
        if namelen > len(data) - 6:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "export name length past the option data")
            return
        (nreq,) = _U16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * nreq:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "information request list does not match the option length")
            return
        try:
            name = data[4:4 + namelen].decode("utf-8")
        except UnicodeDecodeError:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "export name is not UTF-8")
            return
        requests = struct.unpack_from(f">{nreq}H", data, 6 + namelen)
        export = self.fe.exports.open(name)
        if export is None:
            self._opt_reply(opt, NBD_REP_ERR_UNKNOWN, f"no export named {name!r}; list them with NBD_OPT_LIST")
            return
        info = INFO_EXPORT_PAYLOAD.pack(NBD_INFO_EXPORT, export.size, transmission_flags(export, self._structured))
        self._opt_reply(opt, NBD_REP_INFO, info)
        sizes = INFO_BLOCK_SIZE_PAYLOAD.pack(NBD_INFO_BLOCK_SIZE, export.block_size, export.preferred_block,
                                             MAX_REQUEST)
        self._opt_reply(opt, NBD_REP_INFO, sizes)
        if NBD_INFO_NAME in requests:
            self._opt_reply(opt, NBD_REP_INFO, _U16.pack(NBD_INFO_NAME) + export.name.encode())
        if NBD_INFO_DESCRIPTION in requests:
            self._opt_reply(opt, NBD_REP_INFO, _U16.pack(NBD_INFO_DESCRIPTION)
                            + export.description.encode("utf-8", "replace")[: NBD_MAX_STRING])
        self._opt_reply(opt, NBD_REP_ACK)
        if opt == NBD_OPT_GO:
            # the sizes sent bind only a client that asked for them (doc/proto.md, block size constraints)
            self._any_alignment = NBD_INFO_BLOCK_SIZE not in requests
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
            self._opt_reply(opt, NBD_REP_ERR_INVALID, str(exc))
            return None
        return name, queries

    def _opt_meta_context(self, opt, data):
        setting = opt == NBD_OPT_SET_META_CONTEXT
        if setting:
            self._meta_export, self._meta_ok = None, False
        if not self._structured:
            self._opt_reply(opt, NBD_REP_ERR_INVALID, "negotiate NBD_OPT_STRUCTURED_REPLY first")
            return
        parsed = self._parse_meta(opt, data)
        if parsed is None:
            return
        name, queries = parsed
        export = self.fe.exports.open(name)
        if export is None:
            self._opt_reply(opt, NBD_REP_ERR_UNKNOWN, f"no export named {name!r}")
            return
        bitmaps = [NBD_META_DIRTY_BITMAP + b for b in export.bitmaps()]
        chosen = []
        if not queries and not setting:
            queries = ["base:", "qemu:"]      # LIST without queries: every context the export has
        for q in queries:
            if q == NBD_META_BASE_ALLOCATION or (q == "base:" and not setting):
                found = [NBD_META_BASE_ALLOCATION]
            elif q in ("qemu:", NBD_META_DIRTY_BITMAP) and not setting:
                found = bitmaps               # a namespace query lists; only exact names select
            else:
                found = [q] if q in bitmaps else []
            chosen += [c for c in found if c not in chosen]
        if setting:
            # base:allocation keeps id 1 wherever it was asked; each map gets the next free id
            contexts, next_id = [], META_CONTEXT_ID + 1
            for c in chosen:
                if c == NBD_META_BASE_ALLOCATION:
                    contexts.append((META_CONTEXT_ID, c))
                else:
                    contexts.append((next_id, c))
                    next_id += 1
            contexts.sort()
        else:
            contexts = [(0, c) for c in chosen]
        for ctx_id, ctx in contexts:
            self._opt_reply(opt, NBD_REP_META_CONTEXT, _U32.pack(ctx_id) + ctx.encode())
        if setting and contexts:
            self._meta_export, self._meta_ok, self._meta_contexts = name, True, tuple(contexts)
        self._opt_reply(opt, NBD_REP_ACK)


_OPTION_HANDLERS = {
    NBD_OPT_EXPORT_NAME: Handshake._opt_export_name,
    NBD_OPT_ABORT: Handshake._opt_abort,
    NBD_OPT_LIST: Handshake._opt_list,
    NBD_OPT_STARTTLS: Handshake._opt_starttls,
    NBD_OPT_INFO: Handshake._opt_info_go,
    NBD_OPT_GO: Handshake._opt_info_go,
    NBD_OPT_STRUCTURED_REPLY: Handshake._opt_structured_reply,
    NBD_OPT_LIST_META_CONTEXT: Handshake._opt_meta_context,
    NBD_OPT_SET_META_CONTEXT: Handshake._opt_meta_context,
}
