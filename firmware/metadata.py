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
        os.makedirs(directory, exist_ok=True)
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

    def _path(self, name: str) -> str:
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
        tmp = self._path(name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(head + k + body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path(name))
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
        path = self._path(name)
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
            os.unlink(self._path(name))
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
