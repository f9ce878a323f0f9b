"""splitpoint.pyx.memlun_py: a LUN's request path on memory devices, pure Python (twin of memlun.pyx).

Owns the common case of executing a WRITE or a READ on a LUN whose primary device and whose
synchronous mirror target (the active pool member, or none) are memory the kernel may write
into: one call checks the range, copies the payload into the primary and the mirror, marks the
epoch map and clears the known-zero bitmap. It never decides whether a LUN may take this path
(``Lun.memory_path`` does, from the devices' HAL contract), never raises for a request it cannot
serve (it answers False or None, and the caller takes the general path, which raises the
specific error), and never keeps a buffer exported between calls (a device may close).
"""
from __future__ import annotations


class MemoryLun:
    """The memory of one LUN's primary and mirror target, with the LUN's maps.

    ``primary`` and ``mirror`` are writable buffers of ``size`` bytes (``mirror`` may be None: no
    mirror target); ``epochs`` is the LUN's EpochMap, ``zeros`` its ChunkBitmap of known-zero
    chunks or None when no chunk is known zero.
    """

    __slots__ = ("primary", "mirror", "epochs", "zeros", "size", "block_size")

    def __init__(self, primary, mirror, epochs, zeros, size: int, block_size: int):
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size {block_size} is not a power of two")
        for name, buf in (("primary", primary), ("mirror", mirror)):
            if buf is not None and memoryview(buf).nbytes < size:
                raise ValueError(f"the {name} buffer is smaller than the LUN ({size} bytes)")
        self.primary = primary
        self.mirror = mirror
        self.epochs = epochs
        self.zeros = zeros
        self.size = size
        self.block_size = block_size

    def _in_range(self, offset: int, length: int) -> bool:
        return (0 < length and 0 <= offset and offset + length <= self.size
                and not (offset | length) & (self.block_size - 1))

    def write(self, offset: int, length: int, data, epoch: int) -> bool:
        """Apply one WRITE of epoch ``epoch``: True once done, False (nothing changed) when the
        range is empty, outside the LUN or unaligned, or ``data`` is not ``length`` bytes."""
        if data is None or not self._in_range(offset, length) or not 0 <= epoch < 1 << 32:
            return False
        src = memoryview(data)
        if src.nbytes != length:
            return False
        if src.format != "B" or src.ndim != 1:
            src = src.cast("B")
        end = offset + length
        memoryview(self.primary)[offset:end] = src
        if self.zeros is not None:
            self.zeros.clear_range(offset, length)
        self.epochs.mark(offset, length, epoch)
        if self.mirror is not None:
            memoryview(self.mirror)[offset:end] = src
        return True

    def read(self, offset: int, length: int):
        """The primary's bytes of [offset, offset+length), or None when the range is empty,
        outside the LUN or unaligned."""
        if not self._in_range(offset, length):
            return None
        return bytes(memoryview(self.primary)[offset:offset + length])
