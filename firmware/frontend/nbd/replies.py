"""NBD replies: simple and structured replies, errors, and the per-loop-turn write of them.

Owns what goes back to a client in the transmission phase, and the translation of what the
controller answers into NBD's numbers: its errnos (``NBD_ERRORS``, one table) and its allocation
states (``NBD_STATES``). Replies are gathered per connection and written once per loop turn,
after the front end's ``ctl.poll()`` (``flush_output``); every reply moves its request's charge
from "in flight" to "unsent" (see ``transmission``). Nothing here parses, validates or queues a
request.
"""
from __future__ import annotations

import errno
import functools
import logging
import struct

from splitpoint.firmware.frontend.nbd.proto import (
    ERROR_HEAD, NBD_EINVAL, NBD_EIO, NBD_ENOMEM, NBD_ENOSPC, NBD_ENOTSUP, NBD_EOVERFLOW, NBD_EPERM,
    NBD_ERROR_NAMES, NBD_ESHUTDOWN, NBD_MAX_STRING, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS,
    NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_NONE, NBD_REPLY_TYPE_OFFSET_DATA, NBD_SIMPLE_REPLY_MAGIC,
    NBD_STATE_HOLE, NBD_STATE_ZERO, NBD_STRUCTURED_REPLY_MAGIC, OFFSET_DATA_HEAD, SIMPLE_REPLY, STRUCTURED_REPLY,
)
from splitpoint.firmware.requests import STATE_HOLE, STATE_ZERO

log = logging.getLogger("splitpoint.nbd")

#: reply pieces at least this large are written on their own instead of being joined
_WRITE_ALONE = 64 << 10
_SIMPLE_OK = SIMPLE_REPLY
_SIMPLE_MAGIC = NBD_SIMPLE_REPLY_MAGIC

#: the errno a controller error carries (``firmware/errors.py``) -> the NBD error a client gets;
#: anything not listed is NBD_EIO. The one place an errno becomes a wire number.
NBD_ERRORS = {
    errno.EPERM: NBD_EPERM, errno.EACCES: NBD_EPERM, errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO, errno.ENOMEM: NBD_ENOMEM, errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC, errno.EDQUOT: NBD_ENOSPC, errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW, errno.ENOTSUP: NBD_ENOTSUP, errno.EOPNOTSUPP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}

#: the controller's allocation states (``Controller.allocation``) -> NBD base:allocation flags
_STATE_PAIRS = ((STATE_HOLE, NBD_STATE_HOLE), (STATE_ZERO, NBD_STATE_ZERO))
NBD_STATES = {hole | zero: sum(theirs for ours, theirs in _STATE_PAIRS if (hole | zero) & ours)
              for hole in (0, STATE_HOLE) for zero in (0, STATE_ZERO)}


def nbd_error(code) -> int:
    """The NBD error for an errno (None or one NBD has no number for -> NBD_EIO)."""
    return NBD_ERRORS.get(code, NBD_EIO)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(NBD_SIMPLE_REPLY_MAGIC, error, cookie)


def error_chunk(cookie: int, error: int, message: str = "") -> bytes:
    """A final NBD_REPLY_TYPE_ERROR chunk carrying a human-readable message."""
    msg = message.encode("utf-8", "replace")[:NBD_MAX_STRING]
    return ERROR_HEAD.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie,
                           6 + len(msg), error, len(msg)) + msg


def done_chunk(cookie: int) -> bytes:
    """A final NBD_REPLY_TYPE_NONE chunk."""
    return STRUCTURED_REPLY.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0)


def block_status_chunk(cookie: int, context_id: int, extents, done: bool = True) -> bytes:
    """An NBD_REPLY_TYPE_BLOCK_STATUS chunk: ``extents`` is a list of (length, NBD state flags)."""
    body = struct.pack(f">I{2 * len(extents)}I", context_id, *[v for ext in extents for v in ext])
    return STRUCTURED_REPLY.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE if done else 0,
                                 NBD_REPLY_TYPE_BLOCK_STATUS, cookie, len(body)) + body


class Replies:
    """The replies of ``NbdConnection`` (its state lives on the connection)."""

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
        self._send(cookie, _SIMPLE_OK.pack(NBD_SIMPLE_REPLY_MAGIC, 0, cookie))

    def reply_error(self, cookie, error, message=""):
        if self._structured:
            self._send(cookie, error_chunk(cookie, error, message))
        else:
            self._send(cookie, simple_reply(cookie, error))
        log.debug("%s: cookie %#x: %s %s", self.peer, cookie, NBD_ERROR_NAMES.get(error, error), message)

    def reply_exception(self, cookie, exc, message=None):
        self.reply_error(cookie, nbd_error(getattr(exc, "errno", None)), message or str(exc))

    def reply_data(self, cookie, offset, data):
        if self._structured:
            if not data:
                self._send(cookie, done_chunk(cookie))
                return
            head = OFFSET_DATA_HEAD.pack(NBD_STRUCTURED_REPLY_MAGIC, NBD_REPLY_FLAG_DONE,
                                              NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + len(data), offset)
        else:
            head = _SIMPLE_OK.pack(NBD_SIMPLE_REPLY_MAGIC, 0, cookie)
        self._send(cookie, head, data)

    def _on_ok(self, cookie, completion):
        if completion.error is None:
            self.reply_ok(cookie)
        else:
            self.reply_exception(cookie, completion.error)

    def _on_write(self, cookie, completion):
        self._wrote(cookie, 0, completion.error, None)

    def _wrote(self, cookie, _offset, error, _data):
        """Completion of a fast-path WRITE (a tagged callback: no Completion object per request)."""
        if error is not None or self.closed:
            if error is None:
                self.reply_ok(cookie)
            else:
                self.reply_exception(cookie, error)
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
        self._read_done(cookie, offset, completion.error, completion.data)

    def _read_done(self, cookie, offset, error, data):
        """Completion of a READ (a tagged callback on the fast path, or through ``_on_read``)."""
        if error is not None:
            self.reply_exception(cookie, error)
        elif self._structured or self.closed:
            self.reply_data(cookie, offset, data)
        else:
            self._inflight -= 1
            cost = self._costs.pop(cookie, 0)
            if type(cost) is list:           # a reused cookie: the general bookkeeping
                self._costs[cookie] = cost
                self._replied(cookie, 0)
            else:
                self._out_cost += cost
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


class SubBlock:
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

    def pause(self, why):
        self.conn.pause(why)

    def resume(self, why):
        self.conn.resume(why)

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

