"""The firmware core as an in-process board: bytes in, bytes out, through the cffi host build.

Owns ``CBoard``: one C board (``sp_board``) on a RAM medium held here, its
two channels (``data_in`` returns the data channel's reply bytes,
``control_line`` the control channel's answer) and read-only views of the
primary and the frozen backups. It never decides anything a board decides:
framing, sessions, TRIGGERs and rotation are the C core's.
"""
from __future__ import annotations

import json

from splitpoint.hal import wire

try:
    from splitpoint.boards.firmware._cboard import ffi, lib
except ImportError as exc:  # pragma: no cover - only without `make build`
    raise ImportError(f"the firmware's host build is missing ({exc}); run `make build`") from None

CHANNEL_DATA = 0
CHANNEL_CONTROL = 1
DEFAULT_CHUNK = 64 << 10
_FEATURES = {"flush": wire.Feature.FLUSH, "trim": wire.Feature.TRIM, "fua": wire.Feature.FUA,
             "trigger": wire.Feature.TRIGGER, "read-only": wire.Feature.READ_ONLY, "control": wire.Feature.CONTROL}


class FirmwareConfigError(ValueError):
    """The board's configuration is outside what the firmware's host build accepts."""


#: sp_board_init's reasons (core/sp_board.h)
_INIT_REASONS = {-1: "the board id must be UTF-8 of at most 32 bytes", -2: "the window must be 1..32",
                 -3: "max_transfer must be at least the block size and at most 65536",
                 -4: "block size, capacity, chunk size or pool size outside the host build's limits",
                 -5: "the medium failed while the first pool member was brought in sync"}


@ffi.def_extern()
def sp_host_tx(ctx, channel, p, n):
    ffi.from_handle(ctx)._out[channel] += ffi.buffer(p, n)


class CBoard:
    """The C firmware core on a RAM medium of ``(pool_members + 1) * capacity`` bytes.

    The medium holds the primary (region 0) and one region per pool member;
    ``primary()`` and ``region(i)`` read them without going through the board.
    """

    def __init__(self, board_id: str = "emu-usb-fs", capacity: int = 1 << 20, block_size: int = 512,
                 window: int = 8, max_transfer: int = 16384, features: int = 0x2F, firmware: int = 0x010000,
                 chunk_size: int = DEFAULT_CHUNK, pool_members: int = 3):
        self.board_id = board_id
        self.capacity = capacity
        self.block_size = block_size
        self.pool_members = pool_members
        self._out = {CHANNEL_DATA: bytearray(), CHANNEL_CONTROL: bytearray()}
        self._handle = ffi.new_handle(self)
        self._mem = ffi.new("uint8_t[]", capacity * (pool_members + 1))   # zeroed: a fresh RAM medium
        self._ram = ffi.new("sp_host_ram *", {"mem": self._mem, "size": len(self._mem),
                                               "fail_at": 0xFFFFFFFFFFFFFFFF})
        self._storage_mem = ffi.new("uint8_t[]", lib.sp_storage_size())   # owns the bytes the cast points at
        self._storage = ffi.cast("sp_storage *", self._storage_mem)
        lib.sp_host_ram_storage(self._storage, self._ram, 1)
        self._board_mem = ffi.new("uint8_t[]", lib.sp_board_size())
        self._board = ffi.cast("sp_board *", self._board_mem)
        self._id = ffi.new("char[]", board_id.encode())
        cfg = ffi.new("sp_board_config *", {
            "board_id": self._id, "firmware": firmware, "features": features, "window": window,
            "max_transfer": max_transfer, "block_size": block_size, "capacity": capacity,
            "chunk_size": chunk_size, "pool_members": pool_members, "tx": lib.sp_host_tx, "tx_ctx": self._handle})
        rc = lib.sp_board_init(self._board, cfg, self._storage)
        if rc:
            raise FirmwareConfigError(
                f"firmware refused board {board_id!r}: {_INIT_REASONS.get(rc, f'reason {rc}')} (capacity "
                f"{capacity}, block {block_size}, window {window}, max_transfer {max_transfer}, chunk {chunk_size}, "
                f"pool {pool_members})")

    @classmethod
    def from_definition(cls, board, capacity: int | None = None, pool_members: int = 3,
                        chunk_size: int = DEFAULT_CHUNK) -> "CBoard":
        """A C board with the geometry and features of board definition ``board`` (boards/<id>/board.toml)."""
        features = 0
        for name in board.features:
            features |= _FEATURES[name]
        return cls(board.id, board.capacity if capacity is None else capacity, board.block_size, board.window,
                   board.max_transfer, features, wire.pack_version(board.firmware), chunk_size, pool_members)

    # ---- the two channels ----
    def data_in(self, data: bytes) -> bytes:
        """Feed bytes of the data channel; the reply bytes the board sent."""
        lib.sp_board_data_in(self._board, data, len(data))
        return self.take(CHANNEL_DATA)

    def control_in(self, data: bytes) -> bytes:
        """Feed bytes of the control channel; the answer bytes the board sent."""
        lib.sp_board_control_in(self._board, data, len(data))
        return self.take(CHANNEL_CONTROL)

    def control_line(self, line: str) -> str | None:
        """The answer to one control line (None when the board answers nothing, as for a blank line)."""
        out = self.control_in(line.encode() + b"\n").decode()
        return out[:-1] if out else None

    def take(self, channel: int) -> bytes:
        out = bytes(self._out[channel])
        self._out[channel].clear()
        return out

    def reset_link(self) -> None:
        """The data link changed: the board drops a partial frame."""
        lib.sp_board_data_reset(self._board)

    # ---- what the board holds ----
    def status(self) -> dict:
        buf = ffi.new("char[]", 1 << 16)
        n = lib.sp_board_status(self._board, buf, len(buf))
        return json.loads(ffi.string(buf, n).decode())

    def primary(self, offset: int = 0, length: int | None = None) -> bytes:
        return self.region(-1, offset, length)

    def region(self, member: int, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of pool member ``member``'s region (-1: the primary), read from the medium directly."""
        length = self.capacity - offset if length is None else length
        if not (-1 <= member < self.pool_members and 0 <= offset <= self.capacity
                and 0 <= length <= self.capacity - offset):
            raise ValueError(f"region {member} [{offset}, +{length}) is outside the medium")
        base = (member + 1) * self.capacity + offset
        return bytes(ffi.buffer(self._mem + base, length))

    def backups(self) -> list[dict]:
        """The frozen backups in member order: trigger id, label, seq, epoch, digest and member index."""
        out = []
        mf = ffi.new("sp_manifest *")
        member = ffi.new("uint32_t *")
        for k in range(lib.sp_board_backup_count(self._board)):
            if lib.sp_board_backup_info(self._board, k, mf, member):
                break
            out.append({"trigger_id": mf.trigger_id, "label": ffi.unpack(mf.label, mf.label_len).decode(),
                        "seq": mf.seq, "epoch": mf.epoch, "digest": mf.digest, "member": member[0]})
        return out

    def read_backup(self, trigger_id: int, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of the backup cut by ``trigger_id``, through the firmware's own bounds checks."""
        length = self.capacity - offset if length is None else length
        buf = ffi.new("uint8_t[]", length)
        err = lib.sp_board_backup_read(self._board, trigger_id, offset, buf, length)
        if err:
            raise LookupError(f"backup t{trigger_id} [{offset}, +{length}): {wire.ErrorCode(err).name}")
        return bytes(ffi.buffer(buf, length))

    def fail_medium_at(self, offset: int | None) -> None:
        """Every later access touching byte ``offset`` of the medium fails (None: heal it)."""
        self._ram.fail_at = 0xFFFFFFFFFFFFFFFF if offset is None else offset
