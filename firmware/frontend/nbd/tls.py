"""TLS at the NBD edge, spelled as nbdkit spells it.

Owns the TLS settings (``--tls=off|on|require``, ``--tls-certificates DIR``,
``--tls-verify-peer``) and the SSL contexts made from a certificate directory
laid out as nbdkit and qemu lay it out::

    DIR/ca-cert.pem        the CA that signed the peers' certificates (needed to verify peers)
    DIR/server-cert.pem    this server's certificate (chain)
    DIR/server-key.pem     its private key
    DIR/client-cert.pem    a client's certificate, when this side connects (device links)
    DIR/client-key.pem     its private key

``on``: a client may send NBD_OPT_STARTTLS and continue under TLS, or not.
``require``: every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD
until the client has started TLS. It never reads or writes a socket itself:
the handshake upgrades its transport with the context made here.
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

MODES = ("off", "on", "require")
CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


class TlsConfigError(ValueError):
    """The TLS settings or the certificate directory cannot be used; the message names what and why."""


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


def _file(directory: str, name: str, what: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise TlsConfigError(f"TLS certificate directory {directory!r} has no {name} ({what})")
    return path


def server_context(settings: TlsSettings) -> ssl.SSLContext | None:
    """The server side's context (None when TLS is off); every file is checked now, not at the first client."""
    if not settings.enabled:
        return None
    directory = settings.certificates
    if not os.path.isdir(directory):
        raise TlsConfigError(f"TLS certificate directory {directory!r} does not exist")
    cert = _file(directory, SERVER_CERT, "this server's certificate")
    key = _file(directory, SERVER_KEY, "its private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load {cert} with {key}: {exc}") from None
    if settings.verify_peer:
        ca = _file(directory, CA_CERT, "the CA that signs client certificates, for --tls-verify-peer")
        try:
            ctx.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(f"cannot load {ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(directory: str, server_hostname_check: bool = False) -> ssl.SSLContext:
    """A client side's context from the same layout: trust DIR/ca-cert.pem, present DIR/client-cert.pem when
    it is there. Host names are not checked by default (peers are named by address on a rig), the CA is."""
    if not os.path.isdir(directory):
        raise TlsConfigError(f"TLS certificate directory {directory!r} does not exist")
    ca = _file(directory, CA_CERT, "the CA that signed the server's certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = server_hostname_check
    try:
        ctx.load_verify_locations(ca)
        cert = os.path.join(directory, CLIENT_CERT)
        if os.path.isfile(cert):
            ctx.load_cert_chain(cert, _file(directory, CLIENT_KEY, "the client certificate's private key"))
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(f"cannot load the client certificates in {directory!r}: {exc}") from None
    return ctx
