"""Errors the controller reports, each with the errno a front end answers with.

Owns the mapping from "what went wrong with a request" to a specific
exception type and a host errno (EPERM, EIO, EINVAL, ENOSPC, ESHUTDOWN...).
Each front end maps the errno to its protocol's error in one table of its
own. A request that fails completes with one of these as
``Completion.error``; the controller itself keeps serving everything else.
Nothing here ever touches storage.
"""
from __future__ import annotations

import errno as _errno


class ControllerError(Exception):
    """Base of every error the controller reports; ``errno`` is what a front end sends back."""

    errno = _errno.EIO

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class BadRequestError(ControllerError):
    """A request is malformed: unknown opcode, unknown LUN, bad flags."""

    errno = _errno.EINVAL


class ZeroLengthError(BadRequestError):
    """A READ, WRITE, TRIM or WRITE_ZEROES of zero bytes."""


class MisalignedError(BadRequestError):
    """An offset or length that is not a multiple of the LUN's block size."""


class OutOfRangeError(BadRequestError):
    """An I/O reaching past the end of the LUN: ENOSPC for writes, EINVAL for reads."""


class LabelTooLongError(BadRequestError):
    """A TRIGGER label longer than 64 bytes (UTF-8)."""


class ReadOnlyError(ControllerError):
    """A write, trim or zeroing aimed at a read-only LUN."""

    errno = _errno.EPERM


class FrozenMemberError(ReadOnlyError):
    """A write aimed at a frozen backup: point-in-time copies never change."""


class NoSuchLunError(BadRequestError):
    """A LUN name the configuration does not define."""


class NoSuchBackupError(ControllerError, LookupError):
    """No consistent backup with that trigger id (never cut, recycled, or not consistent yet)."""

    errno = _errno.ENOENT


class QueueFullError(ControllerError):
    """The request ring is full; retry after the controller has polled."""

    errno = _errno.EAGAIN


class ShuttingDownError(ControllerError):
    """The controller is stopping and takes no new requests."""

    errno = _errno.ESHUTDOWN


class DeviceIOError(ControllerError):
    """The storage behind a LUN or a backup failed an I/O."""

    errno = _errno.EIO


class GeometryError(ControllerError, ValueError):
    """LUNs that must match (a primary and its backups) differ in size or block size."""

    errno = _errno.EINVAL


class DeviceOpenError(ControllerError, ValueError):
    """A LUN's or a backup's device URL could not be opened (bad URL, missing file, board absent)."""

    errno = _errno.ENODEV


class MetadataError(ControllerError):
    """The metadata store is unreadable: corrupt, wrong version, or from another configuration."""
