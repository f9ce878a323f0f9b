"""The ``nbd://`` backend: a LUN or pool member on any NBD server, through libnbd.

nbdkit, qemu-nbd, another splitpoint or any server a user already runs holds
the blocks; this module turns the contract's hooks into NBD commands on one
libnbd connection. Every op is a round trip, so the device says
``waits_on_link`` and the controller runs its I/O off the loop. A lost
connection makes ``link_down`` true; the next op reconnects, and since the
server may have restarted with other bytes, a reconnect counts as a new
``incarnation`` (the pool then trusts nothing it believed about the member).
"""
from __future__ import annotations

import errno
import threading
from urllib.parse import parse_qsl, urlencode, urlsplit

from splitpoint.hal import libnbd
from splitpoint.hal.contract import (BadURLError, BlockDevice, DeviceClosedError, DeviceGoneError, HalError,
                                     ReadOnlyError, check_io)
from splitpoint.hal.url import check_geometry, parse_bool, parse_size

# URL grammar (the NBD URI standard, as libnbd reads it, plus two options of ours):
#   nbd://HOST[:PORT]/EXPORT[?OPTIONS]            TCP, port 10809 by default
#   nbd+unix:///EXPORT?socket=PATH[&OPTIONS]      a Unix socket
#   nbds://... nbds+unix://...                    the same with TLS (tls-certificates=DIR, tls-psk-file=...)
#   OPTIONS: block=BLOCK (at least the server's minimum; default the larger of that and 512), readonly=0|1,
#            and libnbd's own: socket, tls-certificates, tls-verify-peer, tls-psk-file, tls-username, tls-hostname
GRAMMAR = "nbd[s][+unix]://[HOST[:PORT]]/EXPORT[?socket=PATH][&block=BLOCK][&readonly=0|1][&tls-...=...]"
SCHEMES = ("nbd", "nbds", "nbd+unix", "nbds+unix")
OURS = {"block", "readonly"}
LIBNBDS = {"socket", "tls-certificates", "tls-verify-peer", "tls-psk-file", "tls-username", "tls-hostname"}

#: the most one NBD command carries here (libnbd refuses more than 64 MiB per request)
MAX_REQUEST = 32 << 20
#: the most one TRIM or WRITE_ZEROES covers (NBD lengths are 32-bit)
MAX_ZERO = 1 << 30


def _split(url: str) -> tuple[str, dict[str, str]]:
    """The URI libnbd gets (our options removed) and our options; unknown options are refused."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise BadURLError(f"{url!r} is not an NBD URI; grammar: {GRAMMAR}")
    ours: dict[str, str] = {}
    theirs = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in OURS:
            if key in ours:
                raise BadURLError(f"option {key!r} given twice in {url!r}; grammar: {GRAMMAR}")
            ours[key] = value
        elif key in LIBNBDS:
            theirs.append((key, value))
        else:
            valid = ", ".join(sorted(OURS | LIBNBDS))
            raise BadURLError(f"unknown option {key!r} in {url!r}; grammar: {GRAMMAR} (valid options: {valid})")
    if parts.scheme.lower().endswith("+unix") and not any(k == "socket" for k, _v in theirs):
        raise BadURLError(f"{url!r} needs ?socket=PATH; grammar: {GRAMMAR}")
    query = urlencode(theirs, safe="/")
    # built by hand: urlunsplit drops the "//" of an empty authority, which libnbd needs
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{query}" if query else ""), ours


class NbdDevice(BlockDevice):
    scheme = "nbd"
    #: every op waits on the server: the controller runs this device's I/O on a worker thread
    waits_on_link = True
    persistent = True

    def __init__(self, uri: str, block_size: int | None = None, read_only: bool = False, shown: str | None = None):
        self.uri = uri
        self.shown = shown or uri
        self._lock = threading.RLock()     # one call at a time on the handle; close waits for it
        self._handle = None
        self._closed = False
        self._connect()
        lb, h = libnbd.lib(), self._handle
        self.size = libnbd.check(lb.nbd_get_size(h), f"{self.shown}: size")
        minimum = max(libnbd.check(lb.nbd_get_block_size(h, libnbd.SIZE_MINIMUM), "block size"), 1)
        maximum = libnbd.check(lb.nbd_get_block_size(h, libnbd.SIZE_MAXIMUM), "block size")
        self.block_size = block_size if block_size is not None else max(minimum, 512)
        try:
            check_geometry(self.size, self.block_size, GRAMMAR)
            if self.block_size < minimum:
                raise BadURLError(f"block={self.block_size} is below the server's minimum block size {minimum}; "
                                  f"grammar: {GRAMMAR}")
        except BadURLError:
            self._drop()
            raise
        self._max = min(MAX_REQUEST, maximum) if maximum > 0 else MAX_REQUEST
        self._max -= self._max % self.block_size
        self.read_only = read_only or bool(lb.nbd_is_read_only(h))
        self._can_flush = lb.nbd_can_flush(h) == 1
        self._can_fua = lb.nbd_can_fua(h) == 1
        self._can_zero = lb.nbd_can_zero(h) == 1
        self.stats = {"reconnects": 0, "errors": 0}

    @classmethod
    def from_url(cls, url: str) -> "NbdDevice":
        uri, ours = _split(url)
        return cls(uri, parse_size(ours["block"]) if "block" in ours else None,
                   parse_bool(ours.get("readonly", "0")), shown=url)

    # -- the connection ---------------------------------------------------------------------------
    def _connect(self) -> None:
        lb = libnbd.lib()
        h = lb.nbd_create()
        if h == libnbd.ffi.NULL:
            raise libnbd.last_error("nbd_create")
        if lb.nbd_connect_uri(h, self.uri.encode()) == -1:
            err = libnbd.last_error(f"cannot connect to {self.shown}")
            lb.nbd_close(h)
            raise DeviceGoneError(err.strerror) from None
        self._handle = h
        self.link_down = False

    def _drop(self) -> None:
        h, self._handle = self._handle, None
        if h is not None:
            lb = libnbd.lib()
            lb.nbd_shutdown(h, 0)
            lb.nbd_close(h)

    def _call(self, what: str, fn, *args) -> None:
        """Run one libnbd command; a dead connection is reconnected first (a new incarnation)."""
        with self._lock:
            if self._closed:
                raise DeviceClosedError(f"{self.shown} is closed")
            if self._handle is None:
                try:
                    self._connect()
                except DeviceGoneError:
                    self.link_down = True
                    raise
                self.incarnation += 1
                self.stats["reconnects"] += 1
            if fn(self._handle, *args) != -1:
                return
            err = libnbd.last_error(f"{self.shown}: {what}")
            self.stats["errors"] += 1
            if err.errno in libnbd.CONNECTION_ERRNOS or err.errno == 0:
                self._drop()
                self.link_down = True
                raise DeviceGoneError(err.strerror) from None
            if err.errno in (errno.EROFS, errno.EPERM):
                raise ReadOnlyError(err.strerror) from None
            raise HalError(err.strerror) from None

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self.shown} is read-only")

    # -- the contract -----------------------------------------------------------------------------
    def read(self, offset, length):
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset, buf):
        dst = memoryview(buf).cast("B")
        check_io(offset, len(dst), self.size, self.block_size)
        lb = libnbd.lib()
        for at in range(0, len(dst), self._max):
            piece = dst[at:at + self._max]
            self._call("read", lb.nbd_pread, libnbd.ffi.from_buffer(piece, require_writable=True), len(piece),
                       offset + at, 0)

    def write(self, offset, data, fua=False):
        self._writable()
        src = memoryview(data).cast("B")
        check_io(offset, len(src), self.size, self.block_size)
        lb = libnbd.lib()
        flags = libnbd.CMD_FLAG_FUA if fua and self._can_fua else 0
        for at in range(0, len(src), self._max):
            piece = src[at:at + self._max]
            self._call("write", lb.nbd_pwrite, libnbd.ffi.from_buffer(piece), len(piece), offset + at, flags)
        if fua and not self._can_fua:
            self.flush()

    def flush(self):
        if self._closed:
            raise DeviceClosedError(f"{self.shown} is closed")
        if self._can_flush:   # a server that offers no flush has no write cache to flush
            self._call("flush", libnbd.lib().nbd_flush, 0)

    def trim(self, offset, length):
        # NBD's TRIM may leave old bytes behind; the contract promises zeros, so a trim is a zeroing
        # that lets the server punch holes
        self._zero(offset, length, False, "trim")

    def write_zeroes(self, offset, length, fua=False):
        self._zero(offset, length, fua, "write zeroes")

    def _zero(self, offset, length, fua, what):
        self._writable()
        check_io(offset, length, self.size, self.block_size)
        if not self._can_zero:
            zeros = bytes(min(length, self._max))
            for at in range(0, length, len(zeros)):
                self.write(offset + at, zeros[:min(len(zeros), length - at)])
            if fua:
                self.flush()   # once for the whole range, not once per piece
            return
        lb = libnbd.lib()
        flags = libnbd.CMD_FLAG_FUA if fua and self._can_fua else 0
        for at in range(0, length, MAX_ZERO):
            self._call(what, lb.nbd_zero, min(MAX_ZERO, length - at), offset + at, flags)
        if fua and not self._can_fua:
            self.flush()

    def close(self):
        with self._lock:
            if not self._closed:
                self._closed = True
                self._drop()

    def link_status(self) -> dict:
        """The connection's state and counters, for ``status``."""
        return {"up": not self.link_down and self._handle is not None, **self.stats}

    def describe(self):
        state = "" if self._handle is not None else ", disconnected"
        return f"nbd {self.shown}: {self.size} bytes, block {self.block_size}{state}"
