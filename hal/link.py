# URL grammar:  link://HOST:PORT/LUN[?window=N][&rate=BYTES_PER_S][&rto=DURATION][&retries=N][&reconnect=DURATION]
#                                   [&origin=NAME]
#               link+tls://HOST:PORT/LUN?tls-certificates=DIR[&...the same options]
#   HOST:PORT is another controller's `splitpoint serve --device-listen`; LUN one of its LUNs. origin names
#   this controller in the far side's backup descriptions (default: this host's name). link+tls:// speaks TLS:
#   DIR holds ca-cert.pem (the CA of the far side's certificate) and, for a far side that verifies its peers,
#   client-cert.pem and client-key.pem.
"""The ``link://`` backend: a LUN on another controller, reached over a device link (TCP).

A device link is the wire protocol over TCP: the same session engine as a board
(``HostSession``: sequence numbers, window, retransmission, resume after a drop),
carried by SerialDevice on a TCP port (``TcpPort``). This module owns only what
a link adds: the URL, naming the far LUN (and this side) in INFO, and the TCP port. The far controller queues each request in its ring in frame order,
so a TRIGGER sent here (``trigger``) is cut there at exactly its place and rotates
the far LUN's own pool. It never decides when a TRIGGER is sent: the mirror path does.
"""
from __future__ import annotations

import select
import socket

from splitpoint import pyx
from splitpoint.hal import wire
from splitpoint.hal.contract import BadURLError
from splitpoint.hal.serial_dev import SerialDevice
from splitpoint.hal.url import LINK_OPTIONS, link_options, split_url

GRAMMAR = ("link[+tls]://HOST:PORT/LUN[?window=N][&rate=BYTES_PER_S][&rto=DURATION][&retries=N]"
           "[&reconnect=DURATION][&origin=NAME][&tls-certificates=DIR (link+tls only)]")
OPTIONS = (LINK_OPTIONS - {"baud"}) | {"origin", "tls-certificates"}
#: bytes/s the session's timers assume for a TCP link unless rate= says otherwise. The frame codec, not
#: loopback TCP, bounds it: compiled, ~200 MB/s; its pure-Python twin (CRC32C per byte) ~3 MB/s
TCP_RATE = 100_000_000
TWIN_RATE = 2_000_000
#: seconds a read waits for bytes before the link thread runs the session's timers
TICK = 0.02
#: bytes one read takes from the socket at most
READ_CHUNK = 1 << 20


class TcpPort:
    """The few pyserial port calls SerialDevice makes, on a TCP socket.

    pyserial's own ``socket://`` cannot say how many bytes are waiting, so a reader asking for
    ``in_waiting`` bytes takes them one at a time; here a read returns whatever has arrived (up
    to READ_CHUNK), waiting at most TICK for the first byte."""

    def __init__(self, host: str, port: int, write_timeout: float, tls=None):
        import serial

        self._exc = serial.SerialException
        self._timeout_exc = serial.SerialTimeoutException
        try:
            sock = socket.create_connection((host, port), timeout=max(write_timeout, 1.0))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # one frame per request: never wait
            if tls is not None:   # the handshake runs here, under the connect timeout
                sock = tls.wrap_socket(sock, server_hostname=host)
        except OSError as exc:   # ssl.SSLError included: a certificate the far side refused, or we did
            raise serial.SerialException(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        self.sock = sock
        self._tls = tls is not None
        self.sock.settimeout(write_timeout)
        self.in_waiting = 0   # unknown: read() returns what has arrived, whatever it is asked for

    def read(self, size: int = 1) -> bytes:
        try:
            if not (self._tls and self.sock.pending()):   # TLS may hold a decrypted record already
                ready, _, _ = select.select([self.sock], [], [], TICK)
                if not ready:
                    return b""
            data = self.sock.recv(max(size, READ_CHUNK))
        except socket.timeout:
            return b""   # a TLS record not complete yet
        except OSError as exc:
            raise self._exc(f"link read failed: {exc}") from None
        if not data:
            raise self._exc("the far side closed the link")
        return data

    def write(self, data) -> int:
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise self._timeout_exc("the far side stopped reading the link") from None
        except OSError as exc:
            raise self._exc(f"link write failed: {exc}") from None
        return len(data)

    def reset_input_buffer(self) -> None:
        pass   # a new connection holds no stale bytes

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class LinkDevice(SerialDevice):
    """A LUN of another controller, over a device link; it cuts its own backups at each TRIGGER."""

    scheme = "link"
    cuts_itself = True
    resumes_from_cuts = True   # the listener's INFO names its process (firmware/link/listener.py)

    def __init__(self, host: str, port: int, lun: str, origin: str | None = None, tls=None, **kwargs):
        self.address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.lun = lun
        self.tls = tls is not None
        write_timeout = max(1.0, kwargs.get("rto", 0.2) * 4)
        kwargs.setdefault("rate", TWIN_RATE if pyx.implementations()["frame"] == "python" else TCP_RATE)
        scheme = "link+tls" if tls is not None else "link"
        super().__init__(f"{scheme}://{self.address}/{lun}",
                         serial_factory=lambda: TcpPort(host, port, write_timeout, tls), target=lun,
                         origin=origin if origin is not None else socket.gethostname(), **kwargs)

    @classmethod
    def from_url(cls, url: str) -> "LinkDevice":
        scheme = url.partition("://")[0].lower()
        if scheme not in ("link", "link+tls"):
            raise BadURLError(f"{url!r} is not a link:// or link+tls:// URL; grammar: {GRAMMAR}")
        netloc, path, opts = split_url(url, GRAMMAR, OPTIONS)
        host, sep, port = netloc.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadURLError(f"{url!r} needs HOST:PORT (the far side's --device-listen); grammar: {GRAMMAR}")
        lun = path.strip("/")
        if not lun or "/" in lun:
            raise BadURLError(f"{url!r} names no LUN of the far controller; grammar: {GRAMMAR}")
        origin = opts.pop("origin", None)
        if origin is not None and len(origin.encode()) > wire.MAX_LINK_NAME:
            raise BadURLError(f"origin={origin!r} is longer than {wire.MAX_LINK_NAME} bytes; grammar: {GRAMMAR}")
        certificates = opts.pop("tls-certificates", None)
        tls = None
        if scheme == "link+tls":
            if not certificates:
                raise BadURLError(f"{url!r}: link+tls needs tls-certificates=DIR; grammar: {GRAMMAR}")
            # the certificate layout (ca-cert.pem, client-cert.pem...) has one home: hal/tls.py
            from splitpoint.hal.tls import TlsConfigError, client_context
            try:
                tls = client_context(certificates)
            except TlsConfigError as exc:
                raise BadURLError(f"{url!r}: {exc}") from None
        elif certificates is not None:
            raise BadURLError(f"{url!r}: tls-certificates is for link+tls:// URLs; grammar: {GRAMMAR}")
        return cls(host, int(port), lun, origin=origin, tls=tls, **link_options(opts, GRAMMAR, wire.MAX_WINDOW))

    def describe(self):
        return f"link {self.port_url}: {self.size} bytes, block {self.block_size}, window {self.window}"
