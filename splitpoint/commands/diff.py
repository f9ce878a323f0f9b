"""`splitpoint diff A [B]`: the extents changed between backup A and backup B (or the live LUN).

It reads them as every incremental-backup client does: over NBD, from the meta context
``qemu:dirty-bitmap:A`` of export B (default: A's LUN), with a small client of its own
(fixed newstyle handshake, structured replies, BLOCK_STATUS), so it prints exactly what
``nbdinfo --map=qemu:dirty-bitmap:A nbd://.../B`` prints, in the same columns. It never
reaches into the server otherwise.

URI grammar (as nbdinfo takes them):
    nbd://HOST[:PORT]                     (port 10809 when left out)
    nbd+unix://?socket=PATH
"""
from __future__ import annotations

import json
import socket
import struct
import urllib.parse

import click

NBD_META_DIRTY_BITMAP = "qemu:dirty-bitmap:"
_OPT_MAGIC = b"IHAVEOPT"
_REP_MAGIC = 0x3E889045565A9
_REQUEST_MAGIC = 0x25609513
_STRUCTURED_MAGIC = 0x668E33EF
_SIMPLE_MAGIC = 0x67446698
_OPT_GO, _OPT_STRUCTURED_REPLY, _OPT_SET_META_CONTEXT = 7, 8, 10
_REP_ACK, _REP_INFO, _REP_META_CONTEXT = 1, 3, 4
_REP_ERROR = 1 << 31
_INFO_EXPORT = 0
_CMD_DISC, _CMD_BLOCK_STATUS = 2, 7
_REPLY_FLAG_DONE = 1
_REPLY_BLOCK_STATUS = 5
_REPLY_ERROR_BIT = 1 << 15
_STEP = 1 << 30   # bytes asked per BLOCK_STATUS


class DiffError(Exception):
    """The server could not give the map (no such backup or export, a refused option)."""


def _address(uri: str):
    """(socket family, address) of an NBD URI without its export (see the module's grammar)."""
    u = urllib.parse.urlsplit(uri)
    if u.scheme == "nbd":
        return socket.AF_INET, (u.hostname or "127.0.0.1", u.port or 10809)
    if u.scheme == "nbd+unix":
        path = urllib.parse.parse_qs(u.query).get("socket")
        if path:
            return socket.AF_UNIX, path[0]
    raise click.BadParameter(f"{uri!r} is not nbd://HOST[:PORT] or nbd+unix://?socket=PATH", param_hint="--nbd")


class _Connection:
    def __init__(self, uri: str, timeout: float):
        family, addr = _address(uri)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)

    def recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise DiffError("the server closed the connection")
            out += got
        return bytes(out)

    def option(self, opt: int, data: bytes) -> list[tuple[int, bytes]]:
        """Send one option; its replies up to the ACK (an error reply raises)."""
        self.sock.sendall(_OPT_MAGIC + struct.pack(">II", opt, len(data)) + data)
        replies = []
        while True:
            magic, _opt, kind, length = struct.unpack(">QIII", self.recv(20))
            body = self.recv(length)
            if magic != _REP_MAGIC:
                raise DiffError("not an NBD server (bad option reply magic)")
            if kind & _REP_ERROR:
                raise DiffError(body.decode("utf-8", "replace") or f"option {opt} refused ({kind:#x})")
            if kind == _REP_ACK:
                return replies
            replies.append((kind, body))

    def open(self, export: str, context: str) -> int:
        """Negotiate ``context`` on ``export`` and enter transmission; the export's size."""
        if self.recv(16)[:8] != b"NBDMAGIC":
            raise DiffError("not an NBD server (no NBDMAGIC)")
        self.recv(2)
        self.sock.sendall(struct.pack(">I", 3))          # FIXED_NEWSTYLE | NO_ZEROES
        self.option(_OPT_STRUCTURED_REPLY, b"")
        name = export.encode()
        query = context.encode()
        got = self.option(_OPT_SET_META_CONTEXT, struct.pack(">I", len(name)) + name + struct.pack(">I", 1)
                          + struct.pack(">I", len(query)) + query)
        ids = [struct.unpack_from(">I", body)[0] for kind, body in got
               if kind == _REP_META_CONTEXT and body[4:] == query]
        if not ids:
            raise DiffError(f"export {export!r} has no meta context {context!r} (is the backup still kept?)")
        self.context_id = ids[0]
        size = None
        for kind, body in self.option(_OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0)):
            if kind == _REP_INFO and struct.unpack_from(">H", body)[0] == _INFO_EXPORT:
                size = struct.unpack_from(">Q", body, 2)[0]
        if size is None:
            raise DiffError("the server did not say the export's size")
        return size

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """(length, flags) extents from ``offset`` for the negotiated context."""
        self.sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_BLOCK_STATUS, 1, offset, length))
        extents = []
        while True:
            magic, flags, kind, _cookie, n = struct.unpack(">IHHQI", self.recv(20))
            if magic != _STRUCTURED_MAGIC:
                raise DiffError("BLOCK_STATUS answered without a structured reply")
            body = self.recv(n)
            if kind & _REPLY_ERROR_BIT:
                error, mlen = struct.unpack_from(">IH", body)
                raise DiffError(f"BLOCK_STATUS failed (error {error}): {body[6:6 + mlen].decode('utf-8', 'replace')}")
            if kind == _REPLY_BLOCK_STATUS and struct.unpack_from(">I", body)[0] == self.context_id:
                pairs = struct.unpack_from(f">{(n - 4) // 4}I", body, 4)
                extents += list(zip(pairs[0::2], pairs[1::2]))
            if flags & _REPLY_FLAG_DONE:
                return extents

    def close(self) -> None:
        try:
            self.sock.sendall(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, 2, 0, 0))
        except OSError:
            pass
        self.sock.close()


def changed_extents(uri: str, since: str, export: str, timeout: float = 30.0) -> list[tuple[int, int, bool]]:
    """(offset, length, changed) over the whole of ``export``, from its map ``qemu:dirty-bitmap:<since>``."""
    conn = _Connection(uri, timeout)
    try:
        size = conn.open(export, NBD_META_DIRTY_BITMAP + since)
        out: list[tuple[int, int, bool]] = []
        pos = 0
        while pos < size:
            for n, flags in conn.block_status(pos, min(_STEP, size - pos)):
                n = min(n, size - pos)
                if not n:
                    break
                dirty = bool(flags & 1)
                if out and out[-1][2] == dirty:
                    out[-1] = (out[-1][0], out[-1][1] + n, dirty)
                else:
                    out.append((pos, n, dirty))
                pos += n
        return out
    finally:
        conn.close()


@click.command("diff")
@click.option("--nbd", "uri", envvar="SPLITPOINT_NBD", default="nbd://127.0.0.1:10809", show_default=True,
              metavar="URI", help="The server: nbd://HOST[:PORT] or nbd+unix://?socket=PATH ($SPLITPOINT_NBD).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: the changed extents.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the server.")
@click.argument("since")
@click.argument("until", required=False)
def command(uri, as_json, timeout, since, until):
    """Extents changed between backup SINCE (lun0.t3) and UNTIL (a later backup, lun0.t5, or the
    LUN, lun0: the default), as `nbdinfo --map=qemu:dirty-bitmap:SINCE` prints them on UNTIL.

    Chunks written after SINCE's cut are reported changed; between two backups that is a
    superset of what differs (a chunk written after both cuts counts too), never less.
    """
    if until is None:
        lun, dot, which = since.rpartition(".")
        if not dot or not lun:
            raise click.BadParameter(f"{since!r} is not a backup like lun0.t3", param_hint="SINCE")
        until = lun
    try:
        extents = changed_extents(uri, since, until, timeout)
    except (DiffError, OSError) as exc:
        raise click.ClickException(f"{uri} {until}: {exc}") from None
    if as_json:
        click.echo(json.dumps({"since": since, "until": until,
                               "changed": [[o, n] for o, n, dirty in extents if dirty],
                               "changed_bytes": sum(n for _o, n, dirty in extents if dirty)}))
        return
    for offset, length, dirty in extents:
        click.echo(f"{offset:>10} {length:>11}    {int(dirty)}  {'dirty' if dirty else 'clean'}")
