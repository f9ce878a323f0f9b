"""libnbd, the NBD client library, called through cffi (ABI mode: no headers needed).

Owns the declarations of the few libnbd calls the ``nbd://`` backend uses and
the translation of a failed call into an exception carrying libnbd's message
and errno. It knows nothing of devices or URLs beyond passing a URI on.
Debian ships the library as ``libnbd0``; calls release the GIL while they
wait on the server.
"""
from __future__ import annotations

import errno as _errno

import cffi

_CDEF = """
struct nbd_handle;
struct nbd_handle *nbd_create (void);
void nbd_close (struct nbd_handle *h);
const char *nbd_get_error (void);
int nbd_get_errno (void);
int nbd_connect_uri (struct nbd_handle *h, const char *uri);
int nbd_shutdown (struct nbd_handle *h, uint32_t flags);
int64_t nbd_get_size (struct nbd_handle *h);
int64_t nbd_get_block_size (struct nbd_handle *h, int size_type);
int nbd_is_read_only (struct nbd_handle *h);
int nbd_can_flush (struct nbd_handle *h);
int nbd_can_fua (struct nbd_handle *h);
int nbd_can_zero (struct nbd_handle *h);
int nbd_pread (struct nbd_handle *h, void *buf, size_t count, uint64_t offset, uint32_t flags);
int nbd_pwrite (struct nbd_handle *h, const void *buf, size_t count, uint64_t offset, uint32_t flags);
int nbd_flush (struct nbd_handle *h, uint32_t flags);
int nbd_trim (struct nbd_handle *h, uint64_t count, uint64_t offset, uint32_t flags);
int nbd_zero (struct nbd_handle *h, uint64_t count, uint64_t offset, uint32_t flags);
"""

#: libnbd's command flags (LIBNBD_CMD_FLAG_*)
CMD_FLAG_FUA = 1 << 0
#: nbd_get_block_size size types (LIBNBD_SIZE_*)
SIZE_MINIMUM = 0
SIZE_MAXIMUM = 2

#: errnos after which the connection is gone, not just the one request refused
CONNECTION_ERRNOS = frozenset((_errno.ENOTCONN, _errno.ESHUTDOWN, _errno.ECONNRESET, _errno.EPIPE,
                               _errno.ECONNREFUSED, _errno.ECONNABORTED, _errno.ETIMEDOUT))

ffi = cffi.FFI()
ffi.cdef(_CDEF)
_lib = None


class LibnbdError(OSError):
    """A libnbd call failed; ``errno`` is libnbd's (0 when it gave none), the text is its message."""


def lib():
    """The loaded library; ``LibnbdError`` naming the Debian package when it is not installed."""
    global _lib
    if _lib is None:
        try:
            _lib = ffi.dlopen("libnbd.so.0")
        except OSError as exc:
            raise LibnbdError(_errno.ENOENT, f"libnbd is not installed (Debian package libnbd0): {exc}") from None
    return _lib


def last_error(what: str) -> LibnbdError:
    """The error of the call that just failed on this thread, prefixed with ``what``."""
    lb = lib()
    raw = lb.nbd_get_error()
    message = ffi.string(raw).decode("utf-8", "replace") if raw != ffi.NULL else "unknown libnbd error"
    return LibnbdError(lb.nbd_get_errno(), f"{what}: {message}")


def check(rc: int, what: str) -> int:
    """``rc`` of a libnbd call, or the call's error raised when it is -1."""
    if rc == -1:
        raise last_error(what)
    return rc
