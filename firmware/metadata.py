"""The metadata store: pool state, manifests and epoch maps beside the LUNs, written crash-safely.

Owns the on-disk format and atomic replacement of records, and the clean
shutdown flag. Each record is a file ``<name>.<kind>``:

    magic "SPMD" | u16 version | u16 kind length | u64 generation | u32 body length | u32 CRC32C(body) | kind | body

written to a temporary file, fsynced, renamed over the old one, and the
directory fsynced, so a crash leaves either the old or the new record, never
a torn one (a torn temporary is ignored). The generation grows with every
write of the store, so a reader can tell which of two records is newer.

The clean flag (``CLEAN``) exists only between a clean close and the next
start. Without it the controller assumes a crash: nothing that was not
proven consistent before the crash is trusted. This module never decides what
is consistent; the controller does, from what it reads here.
"""
from __future__ import annotations

import json
import os
import struct

import crc32c

from splitpoint.firmware.errors import MetadataError

MAGIC = b"SPMD"
VERSION = 1
_HEAD = struct.Struct("<4sHHQII")
CLEAN = "CLEAN"


class MetadataStore:
    """Records in one directory, replaced atomically."""

    def __init__(self, directory: str):
        self.directory = directory
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise MetadataError(f"[controller] metadata_dir {directory!r} is not a directory")
        try:
            os.makedirs(directory, exist_ok=True)
            self._probe()
        except OSError as exc:
            # crash safety without a writable store would be silently off: refuse to start instead
            raise MetadataError(f"[controller] metadata_dir {directory!r} is not a writable directory: "
                                f"{exc.strerror or exc}") from None
        self.generation = 0
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))   # a write the crash interrupted
        for name in os.listdir(directory):
            try:
                gen, _kind, _body = self._read_file(os.path.join(directory, name))
            except (MetadataError, OSError):
                continue
            self.generation = max(self.generation, gen)
        self.writes = 0

    def _probe(self) -> None:
        """Create, fsync and remove a file, so a store that cannot be written fails now, not at a crash."""
        path = self.path(".probe.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)

    def path(self, name: str) -> str:
        """Where the store keeps the file ``name`` (the write-intent log lives beside the records)."""
        return os.path.join(self.directory, name)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, name: str, body: bytes, kind: str = "json") -> int:
        """Atomically replace record ``name`` with ``body``; returns its generation."""
        self.generation += 1
        k = kind.encode()
        head = _HEAD.pack(MAGIC, VERSION, len(k), self.generation, len(body), crc32c.crc32c(body))
        tmp = self.path(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(head + k + body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path(name))
        self._fsync_dir()
        self.writes += 1
        return self.generation

    def _read_file(self, path: str) -> tuple[int, str, bytes]:
        with open(path, "rb") as fh:
            raw = fh.read()
        if len(raw) < _HEAD.size:
            raise MetadataError(f"metadata record {path} is truncated")
        magic, version, klen, gen, blen, crc = _HEAD.unpack_from(raw)
        if magic != MAGIC:
            raise MetadataError(f"{path} is not a splitpoint metadata record")
        if version != VERSION:
            raise MetadataError(f"metadata record {path} has version {version}; this splitpoint reads {VERSION}")
        kind = raw[_HEAD.size:_HEAD.size + klen].decode(errors="replace")
        body = raw[_HEAD.size + klen:]
        if len(body) != blen or crc32c.crc32c(body) != crc:
            raise MetadataError(f"metadata record {path} fails its CRC (torn or corrupt)")
        return gen, kind, body

    def read(self, name: str) -> tuple[int, bytes] | None:
        """(generation, body) of record ``name``, None when absent; MetadataError when corrupt."""
        path = self.path(name)
        if not os.path.exists(path):
            return None
        gen, _kind, body = self._read_file(path)
        return gen, body

    def write_json(self, name: str, doc) -> int:
        return self.write(name, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(), "json")

    def read_json(self, name: str):
        got = self.read(name)
        if got is None:
            return None
        gen, body = got
        try:
            return gen, json.loads(body)
        except ValueError as exc:
            raise MetadataError(f"metadata record {name} is not valid JSON: {exc}") from None

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.path(name))
        except FileNotFoundError:
            return
        self._fsync_dir()

    # -- the clean-shutdown flag -------------------------------------------------------------
    def was_clean(self) -> bool:
        """True when the last run closed cleanly (the flag is present and intact)."""
        try:
            got = self.read(CLEAN)
        except MetadataError:
            return False
        return got is not None and got[1] == b"clean"

    def mark_clean(self) -> None:
        self.write(CLEAN, b"clean", "flag")

    def mark_running(self) -> None:
        """From now on a crash must be noticed: drop the clean flag."""
        self.remove(CLEAN)


# -- the write-intent log: double-buffered slots ------------------------------------------------
#
#   file <lun>.intent = slot 0 | slot 1, each SLOT bytes, preallocated (so an update is one
#   pwrite and one fdatasync, no rename, no size change):
#
#     magic "SPIN" | u16 version | u16 0 | u64 seq | u64 maps generation | u32 bitmap bytes | u32 CRC32C | bitmap
#
#   The CRC covers every header byte before it and the bitmap. Update n goes to slot n % 2, so a
#   torn update leaves the other slot, the previous update, intact. A slot extends the epoch maps
#   record whose generation it names; once a newer maps record exists, every slot naming an older
#   one is void: persisting the maps is what clears the intent set, atomically.
_INTENT_MAGIC = b"SPIN"
_INTENT_HEAD = struct.Struct("<4sHHQQII")


class IntentLog:
    """Durable write-intent bitmaps of one LUN in two alternating slots."""

    def __init__(self, path: str, nbytes: int):
        self.path = path
        self.nbytes = nbytes
        self.slot = -(-(_INTENT_HEAD.size + nbytes) // 4096) * 4096
        self.seq = 0
        self._fd = None

    def read(self, maps_generation: int) -> bytes | None:
        """The newest intact bitmap that extends maps record ``maps_generation``; None when none does."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return None
        best = None
        for i in range(2):
            part = raw[i * self.slot:(i + 1) * self.slot]
            if len(part) < _INTENT_HEAD.size + self.nbytes:
                continue
            magic, version, _pad, seq, gen, n, crc = _INTENT_HEAD.unpack_from(part)
            if magic != _INTENT_MAGIC or version != VERSION or n != self.nbytes:
                continue
            body = part[_INTENT_HEAD.size:_INTENT_HEAD.size + n]
            if crc32c.crc32c(part[:_INTENT_HEAD.size - 4] + body) != crc:
                continue   # torn by a crash during its update: the other slot holds the previous one
            self.seq = max(self.seq, seq)
            if gen == maps_generation and (best is None or seq > best[0]):
                best = (seq, bytes(body))
        return None if best is None else best[1]

    def _open(self) -> int:
        if self._fd is None:
            fresh = not os.path.exists(self.path) or os.path.getsize(self.path) != 2 * self.slot
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            if fresh:
                os.ftruncate(fd, 2 * self.slot)
                os.fsync(fd)
                dfd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            self._fd = fd
        return self._fd

    def write(self, maps_generation: int, bitmap: bytes) -> None:
        """Make ``bitmap`` durable as the intent set extending maps record ``maps_generation``."""
        if len(bitmap) != self.nbytes:
            raise ValueError(f"intent bitmap is {len(bitmap)} bytes; this log holds {self.nbytes}")
        fd = self._open()
        self.seq += 1
        head = _INTENT_HEAD.pack(_INTENT_MAGIC, VERSION, 0, self.seq, maps_generation, self.nbytes, 0)
        crc = crc32c.crc32c(head[:-4] + bitmap)
        data = head[:-4] + struct.pack("<I", crc) + bitmap
        view = memoryview(data)
        pos = (self.seq % 2) * self.slot
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n
        os.fdatasync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
