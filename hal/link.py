# URL grammar:  link://HOST:PORT/LUN[?window=N][&rate=BYTES_PER_S][&rto=DURATION][&retries=N][&reconnect=DURATION]
#                                   [&origin=NAME]
#   HOST:PORT is another controller's `splitpoint serve --device-listen`; LUN one of its LUNs. origin names
#   this controller in the far side's backup descriptions (default: this host's name).
"""The ``link://`` backend: a LUN on another controller, reached over a device link (TCP).

A device link is the wire protocol over TCP: the same session engine as a board
(``HostSession``: sequence numbers, window, retransmission, resume after a drop),
carried by SerialDevice on a pyserial ``socket://`` port. This module owns only
what a link adds: the URL, naming the far LUN (and this side) in INFO, and TCP's
own settings. The far controller queues each request in its ring in frame order,
so a TRIGGER sent here (``trigger``) is cut there at exactly its place and rotates
the far LUN's own pool. It never decides when a TRIGGER is sent: the mirror path does.
"""
from __future__ import annotations

import socket

from splitpoint.hal import wire
from splitpoint.hal.contract import BadURLError
from splitpoint.hal.serial_dev import SerialDevice
from splitpoint.hal.url import LINK_OPTIONS, link_options, split_url

GRAMMAR = ("link://HOST:PORT/LUN[?window=N][&rate=BYTES_PER_S][&rto=DURATION][&retries=N][&reconnect=DURATION]"
           "[&origin=NAME]")
OPTIONS = (LINK_OPTIONS - {"baud"}) | {"origin"}
#: bytes/s the session's timers assume for a TCP link unless rate= says otherwise
TCP_RATE = 100_000_000


class LinkDevice(SerialDevice):
    """A LUN of another controller, over a device link; it cuts its own backups at each TRIGGER."""

    scheme = "link"
    cuts_itself = True

    def __init__(self, host: str, port: int, lun: str, origin: str | None = None, **kwargs):
        import serial  # pyserial, imported only when a link is used

        self.address = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
        self.lun = lun
        url = f"socket://{self.address}"

        def open_tcp():
            port_ = serial.serial_for_url(url, timeout=0.02, write_timeout=max(1.0, kwargs.get("rto", 0.2) * 4))
            sock = getattr(port_, "_socket", None)
            if sock is not None:   # one frame per request: never wait for the previous one's TCP ack
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return port_

        kwargs.setdefault("rate", TCP_RATE)
        super().__init__(url, serial_factory=open_tcp, target=lun,
                         origin=origin if origin is not None else socket.gethostname(), **kwargs)
        self.port_url = f"link://{self.address}/{lun}"

    @classmethod
    def from_url(cls, url: str) -> "LinkDevice":
        if not url.lower().startswith("link://"):
            raise BadURLError(f"{url!r} is not a link:// URL; grammar: {GRAMMAR}")
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
        return cls(host, int(port), lun, origin=origin, **link_options(opts, GRAMMAR, wire.MAX_WINDOW))

    def describe(self):
        return f"link {self.port_url}: {self.size} bytes, block {self.block_size}, window {self.window}"
