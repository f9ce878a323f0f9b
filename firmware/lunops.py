"""The opcode table of requests on a LUN: one handler per opcode, each checking its request once.

Owns what the general path does with a dequeued READ, WRITE, TRIM, WRITE_ZEROES, FLUSH, CACHE and
TRIGGER on a primary LUN (and the sub-block forms of the writes): the range, read-only and flag
checks with their specific errors, the call into the LUN, and the counters. A mixin of
``Controller``: it runs only inside ``_execute_batch`` on the owner thread, and never queues,
completes or reorders a request (the controller loop does); the TRIGGER's split is the controller's.
"""
from __future__ import annotations

from splitpoint.firmware import errors as E
from splitpoint.firmware.lun import Lun
from splitpoint.firmware.requests import FLAG_SUB_BLOCK, FLAGS_KNOWN, Op, TriggerResult

_READ = int(Op.READ)
_WRITE = int(Op.WRITE)
_FLUSH = int(Op.FLUSH)
_TRIM = int(Op.TRIM)
_CACHE = int(Op.CACHE)
_ZEROES = int(Op.WRITE_ZEROES)
_TRIGGER = int(Op.TRIGGER)


class LunRequests:
    """The handlers the controller's per-request step looks up by opcode (its ``_lun_ops`` and ``_sub_block_ops`` tables)."""

    def _opcode_tables(self) -> None:
        """Bind the handlers: requests on a LUN, the same with FLAG_SUB_BLOCK, and requests on a backup."""
        self._lun_ops = {_WRITE: self._write, _READ: self._read, _TRIGGER: self._trigger, _FLUSH: self._flush,
                         _TRIM: self._trim_or_zero, _ZEROES: self._trim_or_zero, _CACHE: self._cache,
                         int(Op.RESTORE): self._restore}
        self._sub_block_ops = {_WRITE: self._sub_block, _TRIM: self._sub_block, _ZEROES: self._sub_block}
        self._backup_ops = {_READ: self._read_backup_target, _FLUSH: self._backup_nothing,
                            _CACHE: self._backup_nothing, _WRITE: self._backup_frozen, _TRIM: self._backup_frozen,
                            _ZEROES: self._backup_frozen}

    @staticmethod
    def _unknown_op(lun, seq, op, offset, length, data, flags, label, refused):
        if flags & FLAG_SUB_BLOCK:
            raise E.BadRequestError(f"the sub-block flag applies to WRITE, TRIM and WRITE_ZEROES, not opcode {op}")
        raise E.BadRequestError(f"unknown opcode {op}; opcodes: {', '.join(f'{o.name}={o.value}' for o in Op)}")

    def _write(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> None:
        lun.check_range(offset, length, True)
        if lun.read_only:
            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
        if flags & ~FLAGS_KNOWN:
            raise E.BadRequestError(f"unknown flags {flags:#x}")
        if data is None or (len(data) if type(data) is bytes else memoryview(data).nbytes) != length:
            raise E.BadRequestError(f"WRITE of {length} bytes needs exactly {length} bytes of data")
        if refused and lun in refused:
            raise E.MetadataError(refused[lun])
        lun.apply(_WRITE, offset, length, data, flags, lun.epoch)
        counters = self.counters
        counters["writes"] += 1
        counters["bytes_written"] += length

    def _read(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> bytes:
        lun.check_range(offset, length, False)
        result = lun.read(offset, length)
        counters = self.counters
        counters["reads"] += 1
        counters["bytes_read"] += length
        return result

    def _trigger(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> TriggerResult:
        return self._split(lun, seq, label, data)   # a TRIGGER's data slot holds its group token

    def _flush(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> None:
        lun.flush()
        self.counters["flushes"] += 1

    def _trim_or_zero(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> None:
        lun.check_range(offset, length, True)
        if lun.read_only:
            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
        if refused and lun in refused:
            raise E.MetadataError(refused[lun])
        lun.apply(op, offset, length, None, flags, lun.epoch)
        self.counters["trims" if op == _TRIM else "zeroes"] += 1

    @staticmethod
    def _cache(lun: Lun, seq, op, offset, length, data, flags, label, refused) -> None:
        lun.check_range(offset, length, False)

    def _sub_block(self, lun: Lun, seq, op, offset, length, data, flags, label, refused) -> None:
        """A WRITE, TRIM or WRITE_ZEROES whose range need not be block-aligned (FLAG_SUB_BLOCK): executed
        in its place in the sequence by the LUN, which rewrites the partial blocks at either end whole."""
        flags &= ~FLAG_SUB_BLOCK
        lun.check_range(offset, length, True, aligned=False)
        if lun.read_only:
            raise E.ReadOnlyError(f"LUN {lun.name} is read-only")
        if flags & ~FLAGS_KNOWN:
            raise E.BadRequestError(f"unknown flags {flags:#x}")
        if op == _WRITE and (data is None or memoryview(data).nbytes != length):
            raise E.BadRequestError(f"WRITE of {length} bytes needs exactly {length} bytes of data")
        if refused and lun in refused:
            raise E.MetadataError(refused[lun])
        lun.apply_unaligned(op, offset, length, data, flags)
        counters = self.counters
        if op == _WRITE:
            counters["writes"] += 1
            counters["bytes_written"] += length
        else:
            counters["trims" if op == _TRIM else "zeroes"] += 1
