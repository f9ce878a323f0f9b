"""TLS at the NBD edge, spelled as nbdkit spells it.

Owns the TLS settings (``--tls=off|on|require``, ``--tls-certificates DIR``,
``--tls-verify-peer``); the certificate directory's layout and the SSL contexts
are ``splitpoint.hal.tls``'s (device links use the same).

``on``: a client may send NBD_OPT_STARTTLS and continue under TLS, or not.
``require``: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD
until the client has started TLS. It never reads or writes a socket itself:
the handshake upgrades its transport with the context made here.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass

from splitpoint.hal import tls as _certs
from splitpoint.hal.tls import SERVER_CERT, SERVER_KEY, TlsConfigError, client_context  # noqa: F401  (one home)

MODES = ("off", "on", "require")


@dataclass(frozen=True)
class TlsSettings:
    """How the NBD edge speaks TLS."""

    mode: str = "off"                 # off | on | require
    certificates: str | None = None   # the certificate directory (nbdkit's --tls-certificates)
    verify_peer: bool = False         # refuse clients without a certificate signed by DIR/ca-cert.pem

    def __post_init__(self):
        if self.mode not in MODES:
            raise TlsConfigError(f"tls must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode != "off" and not self.certificates:
            raise TlsConfigError(f"tls={self.mode} needs a certificate directory (--tls-certificates DIR holding "
                                 f"{SERVER_CERT} and {SERVER_KEY})")
        if self.verify_peer and self.mode == "off":
            raise TlsConfigError("--tls-verify-peer needs --tls=on or --tls=require")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def required(self) -> bool:
        return self.mode == "require"


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The server side's context (None when TLS is off); every file is checked now, not at the first client."""
    if not settings.enabled:
        return None
    return _certs.server_context(settings.certificates, settings.verify_peer)
