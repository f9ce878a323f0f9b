"""Striped devices: one block address space spread round-robin over several part devices.

Owns the split arithmetic (``StripeLayout``: which part, and where on it, each byte of a request
lives) and ``StripedDevice``, a BlockDevice whose every op is cut into per-part pieces, issued to
each part in stream order, and answered only when every piece is done (the first piece's error is
the request's). A TRIGGER (``trigger``) goes to every part that cuts itself, in part order, each
behind that part's earlier pieces. It never decides when a TRIGGER is sent, and never keeps a
pool: each part (a device link to another controller, or a board running the firmware) cuts its own.

Layout, stripe size S, n parts: stripe unit k = offset // S lives on part k % n at part offset
(k // n) * S + offset % S::

    LUN  | u0 | u1 | u2 | u3 | u4 | u5 | ...
    part0| u0 | u2 | u4 | ...
    part1| u1 | u3 | u5 | ...
"""
from __future__ import annotations

from splitpoint.hal.contract import BlockDevice, HalError, check_io


class StripeLayoutError(HalError, ValueError):
    """A stripe size or a set of parts that cannot make a striped device."""


class StripeLayout:
    """Round-robin placement of stripe units of ``stripe`` bytes over ``nparts`` parts."""

    def __init__(self, stripe: int, nparts: int, block_size: int = 512):
        if nparts < 1:
            raise StripeLayoutError(f"a stripe needs at least one part, got {nparts}")
        if stripe <= 0 or stripe % block_size:
            raise StripeLayoutError(f"stripe size {stripe} is not a positive multiple of the block size {block_size}")
        self.stripe = stripe
        self.nparts = nparts

    def split(self, offset: int, length: int) -> list[tuple[int, int, int, int]]:
        """Pieces of [offset, offset+length) as (part, part_offset, lun_offset, length), in LUN order.

        Adjacent units of one part (possible only with one part) are not merged: each piece stays
        inside one stripe unit."""
        s, n = self.stripe, self.nparts
        out = []
        pos, end = offset, offset + length
        while pos < end:
            unit, within = divmod(pos, s)
            take = min(s - within, end - pos)
            row, part = divmod(unit, n)
            out.append((part, row * s + within, pos, take))
            pos += take
        return out

    def size_for(self, part_sizes) -> int:
        """The striped size the parts give: whole rows of units, each part as large as the smallest."""
        rows = min(part_sizes) // self.stripe
        return rows * self.stripe * self.nparts


class StripedDevice(BlockDevice):
    """One LUN over several part devices; every op is split per part and done on every part it touches."""

    scheme = "stripe"

    def __init__(self, parts, stripe: int):
        parts = list(parts)
        if not parts:
            raise StripeLayoutError("a striped device needs at least one part")
        block = parts[0].block_size
        for i, p in enumerate(parts):
            if p.block_size != block:
                raise StripeLayoutError(f"part {i} has block size {p.block_size}, part 0 has {block}: "
                                        f"every part of a stripe needs the same block size")
        self.layout = StripeLayout(stripe, len(parts), block)
        self.parts = parts
        self.stripe = stripe
        self.block_size = block
        self.size = self.layout.size_for([p.size for p in parts])
        if self.size == 0:
            raise StripeLayoutError(f"the smallest part ({min(p.size for p in parts)} bytes) holds no whole "
                                    f"stripe unit of {stripe} bytes")
        self.read_only = any(getattr(p, "read_only", False) for p in parts)
        self.persistent = all(getattr(p, "persistent", True) for p in parts)

    @property
    def cuts_itself(self) -> bool:
        """Every part takes TRIGGERs in band and cuts its own backups."""
        return all(getattr(p, "cuts_itself", False) for p in self.parts)

    def pieces(self, offset: int, length: int):
        check_io(offset, length, self.size, self.block_size)
        return self.layout.split(offset, length)

    def read(self, offset, length):
        out = bytearray(length)
        for part, poff, loff, n in self.pieces(offset, length):
            out[loff - offset:loff - offset + n] = self.parts[part].read(poff, n)
        return bytes(out)

    def write(self, offset, data, fua=False):
        src = memoryview(data).cast("B")
        for part, poff, loff, n in self.pieces(offset, len(src)):
            self.parts[part].write(poff, src[loff - offset:loff - offset + n], fua)

    def trim(self, offset, length):
        for part, poff, _loff, n in self.pieces(offset, length):
            self.parts[part].trim(poff, n)

    def write_zeroes(self, offset, length, fua=False):
        for part, poff, _loff, n in self.pieces(offset, length):
            self.parts[part].write_zeroes(poff, n, fua)

    def flush(self):
        first = None
        for p in self.parts:
            try:
                p.flush()
            except HalError as exc:
                first = first or exc
        if first is not None:
            raise first

    def trigger(self, trigger_id: int, label: str = "", missed: bool = False) -> None:
        """The TRIGGER on every part, in part order, each behind that part's earlier pieces."""
        for p in self.parts:
            p.trigger(trigger_id, label, missed)

    def close(self):
        for p in self.parts:
            try:
                p.close()
            except HalError:
                pass

    def describe(self):
        return (f"stripe of {len(self.parts)} parts, unit {self.stripe}: {self.size} bytes, "
                f"block {self.block_size}")
