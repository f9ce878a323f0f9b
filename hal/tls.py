"""TLS certificates as nbdkit and qemu lay them out, and the SSL contexts made from them.

Owns the directory layout and the contexts every TLS user builds from it (the NBD edge's
``--tls-certificates``, device links' ``link+tls://``)::

    DIR/ca-cert.pem        the CA that signed the peers' certificates (needed to verify peers)
    DIR/server-cert.pem    this server's certificate (chain)
    DIR/server-key.pem     its private key
    DIR/client-cert.pem    a client's certificate, when this side connects (device links)
    DIR/client-key.pem     its private key

Every file is checked when the context is made, so a bad directory fails at start, not at the
first peer. It never opens a socket.
"""
from __future__ import annotations

import os
import ssl

CA_CERT = "ca-cert.pem"
SERVER_CERT = "server-cert.pem"
SERVER_KEY = "server-key.pem"
CLIENT_CERT = "client-cert.pem"
CLIENT_KEY = "client-key.pem"


class TlsConfigError(ValueError):
    """The TLS settings or the certificate directory cannot be used; the message names what and why."""


def _file(directory: str, name: str, what: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise TlsConfigError(f"TLS certificate directory {directory!r} has no {name} ({what})")
    return path


def server_context(directory: str, verify_peer: bool = False) -> ssl.SSLContext:
    """A server side's context: DIR/server-cert.pem and its key; with ``verify_peer``, clients must
    present a certificate signed by DIR/ca-cert.pem."""
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
    if verify_peer:
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
