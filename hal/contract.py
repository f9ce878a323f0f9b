"""The BlockDevice contract: what the controller may ask of any storage.

Every backend (one module per URL scheme) and every filter implements exactly
these hooks. A backend checks bounds and alignment itself, through
``check_io``, and raises the specific errors below; it never retries, caches or
reorders on the controller's behalf.
"""
from __future__ import annotations


class HalError(Exception):
    """Base of every storage error raised through the HAL."""


class BadURLError(HalError, ValueError):
    """A device URL is malformed or names an unknown scheme or option."""


class OutOfRangeError(HalError):
    """An I/O reaches past the end of the device (overflow included)."""


class MisalignedError(HalError):
    """An I/O's offset or length is not a multiple of the device block size."""


class ZeroLengthError(HalError):
    """An I/O of zero bytes where the contract requires at least one block."""


class ReadOnlyError(HalError):
    """A write, trim or zeroing reached a read-only device."""


class DeviceClosedError(HalError):
    """The device was closed; no further I/O is possible."""


class DeviceGoneError(HalError):
    """The device stopped answering (a board unplugged or timed out)."""


def check_io(offset: int, length: int, size: int, block_size: int) -> None:
    """Raise the specific error for an I/O that is out of range, misaligned or empty."""
    if offset < 0 or length < 0:
        raise OutOfRangeError(f"negative offset {offset} or length {length}")
    if length == 0:
        raise ZeroLengthError(f"zero-length I/O at offset {offset}")
    if offset > size or length > size - offset:
        raise OutOfRangeError(f"I/O [{offset}, {offset}+{length}) is past the end of the device ({size} bytes)")
    if offset % block_size or length % block_size:
        raise MisalignedError(f"I/O [{offset}, {offset}+{length}) is not aligned to the block size {block_size}")


#: bytes moved per read/write by the generic copy between two devices
COPY_STEP = 4 << 20


def copy_by_steps(src, dst, extents) -> int:
    """Copy byte extents of ``src`` into ``dst`` (same offsets) in COPY_STEP pieces; return the bytes copied.

    Reads zero-copy from ``src.buffer()`` where the source has one; every byte is written
    through ``dst.write()``, so the destination's bounds, read-only state and filters apply."""
    sbuf = src.buffer()
    total = 0
    for offset, length in extents:
        end = offset + length
        while offset < end:
            n = min(COPY_STEP, end - offset)
            dst.write(offset, sbuf[offset:offset + n] if sbuf is not None else src.read(offset, n))
            offset += n
            total += n
    return total


class BlockDevice:
    """A fixed-size array of blocks. Subclasses override every hook below."""

    #: scheme this backend serves, e.g. "ram"
    scheme = ""
    #: capacity in bytes, a multiple of block_size
    size: int = 0
    #: smallest unit of I/O in bytes, a power of two
    block_size: int = 512
    #: True when writes, trims and zeroing are refused
    read_only: bool = False
    #: grows each time the medium may have lost its contents (a board reset); constant for ram:// and file://
    incarnation: int = 0
    #: True while the device cannot be reached (a board unplugged or restarting); I/O waits or fails meanwhile
    link_down: bool = False
    #: True when the contents outlive the process (file://, boards); False for ram://, which starts zeroed
    persistent: bool = True
    #: True when the device is a controller that takes TRIGGERs in band (``trigger(id, label, missed)``, in
    #: order behind the writes) and cuts its own backups (a device link, a board running the firmware)
    cuts_itself: bool = False
    #: True when ``buffer()`` is the medium itself and ``write()`` only copies into it (nothing to make
    #: durable, no filter, no queue): a kernel that checked bounds and read_only may then write there
    writable_buffer: bool = False

    def read(self, offset: int, length: int) -> bytes:
        """Return ``length`` bytes starting at ``offset``."""
        raise NotImplementedError

    def readinto(self, offset: int, buf) -> None:
        """Fill the writable buffer ``buf`` with bytes starting at ``offset``."""
        mv = memoryview(buf).cast("B")
        mv[:] = self.read(offset, len(mv))

    def write(self, offset: int, data, fua: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``fua`` it is durable on return."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make every completed write durable."""
        raise NotImplementedError

    def trim(self, offset: int, length: int) -> None:
        """Discard a range; it reads back as zeros afterwards."""
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int, fua: bool = False) -> None:
        """Write zeros over a range without sending a zero buffer."""
        raise NotImplementedError

    def buffer(self):
        """A memoryview of the device's bytes where it has one (ram://), else None.

        Callers may READ from it zero-copy; every WRITE still goes through
        ``write()`` / ``write_zeroes()`` so bounds, read-only and filters apply, unless the device
        declares ``writable_buffer``."""
        return None

    def copy_from(self, src: "BlockDevice", extents) -> int:
        """Write ``src``'s bytes over each (offset, length) extent, same offsets; return the bytes copied.

        The resync's data mover. A backend overrides it where it can move the bytes
        itself (file:// to file:// in the kernel); otherwise every byte goes through
        ``write()``."""
        return copy_by_steps(src, self, extents)

    def close(self) -> None:
        """Release the device; further I/O raises DeviceClosedError."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line human description: scheme, size, block size."""
        return f"{self.scheme}: {self.size} bytes, block {self.block_size}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
