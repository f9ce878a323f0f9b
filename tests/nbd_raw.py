"""A raw-bytes NBD client for the front-end tests: every message is packed here by hand from
doc/proto.md, independently of the server's own wire module, so a shared mistake cannot hide."""
from __future__ import annotations

import socket
import struct

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF

OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, STARTTLS=5, INFO=6, GO=7, STRUCTURED_REPLY=8,
           LIST_META_CONTEXT=9, SET_META_CONTEXT=10, EXTENDED_HEADERS=11)
REP = dict(ACK=1, SERVER=2, INFO=3, META_CONTEXT=4, ERR_UNSUP=2**31 + 1, ERR_POLICY=2**31 + 2,
           ERR_INVALID=2**31 + 3, ERR_UNKNOWN=2**31 + 6, ERR_SHUTDOWN=2**31 + 7, ERR_TOO_BIG=2**31 + 9)
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5, WRITE_ZEROES=6, BLOCK_STATUS=7)
FLAG = dict(FUA=1, NO_HOLE=2, DF=4, REQ_ONE=8, FAST_ZERO=16)
TF = dict(HAS_FLAGS=1, READ_ONLY=2, SEND_FLUSH=4, SEND_FUA=8, SEND_TRIM=32, SEND_WRITE_ZEROES=64,
          SEND_DF=128, CAN_MULTI_CONN=256, SEND_CACHE=1024, SEND_FAST_ZERO=2048)
ERR = dict(EPERM=1, EIO=5, EINVAL=22, ENOSPC=28, EOVERFLOW=75, ENOTSUP=95, ESHUTDOWN=108)


class Closed(Exception):
    """The server closed the connection."""


class Reply:
    def __init__(self, cookie, error=0, data=b"", chunks=(), message=""):
        self.cookie, self.error, self.data, self.chunks, self.message = cookie, error, data, list(chunks), message

    def __repr__(self):
        return f"Reply(cookie={self.cookie}, error={self.error}, data={len(self.data)}B, message={self.message!r})"


class RawClient:
    def __init__(self, address, timeout=10.0):
        family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.structured = False
        self.pending = {}
        self.next_cookie = 1
        self.size = None
        self.tflags = None

    # --- bytes -------------------------------------------------------------------------
    def send(self, data: bytes):
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise Closed(f"closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def is_closed(self, timeout=5.0) -> bool:
        """True when the server closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    # --- handshake ----------------------------------------------------------------------
    def greeting(self) -> int:
        magic, ihaveopt, flags = struct.unpack(">QQH", self.recv(18))
        assert magic == NBDMAGIC and ihaveopt == IHAVEOPT
        return flags

    def start(self, client_flags=3) -> int:
        flags = self.greeting()
        self.send(struct.pack(">I", client_flags))
        return flags

    def option(self, opt: int, data: bytes = b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def opt_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv(20))
        assert magic == OPT_REPLY_MAGIC, hex(magic)
        return opt, rtype, self.recv(length)

    def opt_replies(self, opt):
        """Every reply to ``opt`` up to and including the final one (ACK or an error)."""
        out = []
        while True:
            got_opt, rtype, payload = self.opt_reply()
            assert got_opt == opt
            out.append((rtype, payload))
            if rtype == REP["ACK"] or rtype & (1 << 31):
                return out

    @staticmethod
    def info_data(name: str, infos=()) -> bytes:
        raw = name.encode()
        return struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(infos)}H", len(infos), *infos)

    @staticmethod
    def meta_data(name: str, queries) -> bytes:
        raw = name.encode()
        out = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
        for q in queries:
            q = q.encode()
            out += struct.pack(">I", len(q)) + q
        return out

    def go(self, name="lun0", infos=(), opt=OPT["GO"]):
        self.option(opt, self.info_data(name, infos))
        replies = self.opt_replies(opt)
        for rtype, payload in replies:
            if rtype == REP["INFO"] and struct.unpack(">H", payload[:2])[0] == 0:
                self.size, self.tflags = struct.unpack(">QH", payload[2:])
        return replies

    def connect(self, name="lun0", structured=False, meta=False):
        """Full fixed-newstyle negotiation, ending in transmission on ``name``."""
        self.start()
        if structured or meta:
            self.option(OPT["STRUCTURED_REPLY"])
            assert self.opt_replies(OPT["STRUCTURED_REPLY"])[-1][0] == REP["ACK"]
            self.structured = True
        if meta:
            self.option(OPT["SET_META_CONTEXT"], self.meta_data(name, ["base:allocation"]))
            replies = self.opt_replies(OPT["SET_META_CONTEXT"])
            assert replies[-1][0] == REP["ACK"] and replies[0][0] == REP["META_CONTEXT"], replies
            self.meta_id = struct.unpack(">I", replies[0][1][:4])[0]
        replies = self.go(name, infos=(3,))
        assert replies[-1][0] == REP["ACK"], replies
        return self

    # --- transmission ----------------------------------------------------------------------
    def request(self, cmd: str | int, offset=0, length=0, flags=0, payload=b"", cookie=None) -> int:
        cmd = CMD[cmd] if isinstance(cmd, str) else cmd
        if cookie is None:
            cookie = self.next_cookie
            self.next_cookie += 1
        if cmd == CMD["WRITE"] and not length:
            length = len(payload)
        self.pending[cookie] = (cmd, length)
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, cookie, offset, length) + payload)
        return cookie

    def reply(self) -> Reply:
        """The next complete reply (all chunks of a structured one)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE_MAGIC:
            error, cookie = struct.unpack(">IQ", self.recv(12))
            cmd, length = self.pending.pop(cookie)
            data = self.recv(length) if cmd == CMD["READ"] and not error else b""
            return Reply(cookie, error, data)
        chunks, data, error, message = [], bytearray(), 0, ""
        while True:
            assert magic == STRUCTURED_MAGIC, hex(magic)
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv(16))
            payload = self.recv(length)
            chunks.append((ctype, payload))
            if ctype == 1:
                data += payload[8:]
            elif ctype & 0x8000:
                error, mlen = struct.unpack(">IH", payload[:6])
                message = payload[6:6 + mlen].decode()
            if flags & 1:
                break
            magic = struct.unpack(">I", self.recv(4))[0]
        self.pending.pop(cookie)
        return Reply(cookie, error, bytes(data), chunks, message)

    def do(self, cmd, offset=0, length=0, flags=0, payload=b"") -> Reply:
        cookie = self.request(cmd, offset, length, flags, payload)
        reply = self.reply()
        assert reply.cookie == cookie
        return reply

    def read(self, offset, length) -> bytes:
        reply = self.do("READ", offset, length)
        assert reply.error == 0, reply
        return reply.data

    def write(self, offset, data, flags=0):
        reply = self.do("WRITE", offset, flags=flags, payload=data)
        assert reply.error == 0, reply

    def disconnect(self):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD["DISC"], 0, 0, 0))
