"""TLS at the NBD edge (NBD_OPT_STARTTLS), driven with real clients: nbdinfo, nbdcopy and qemu-io over nbds://.

Certificates are made in the test run (trustme), laid out as nbdkit and qemu expect them.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest
import trustme
from nbd_raw import OPT, REP, RawClient

from splitpoint.demo import ServerProcess

pytestmark = [pytest.mark.clients,
              pytest.mark.skipif(any(shutil.which(t) is None for t in ("nbdinfo", "nbdcopy", "qemu-io")),
                                 reason="nbdinfo, nbdcopy and qemu-io are needed (make test installs them)")]

ERR_TLS_REQD = 2**31 + 5


def _write_pair(cert, directory, prefix):
    cert.cert_chain_pems[0].write_to_path(os.path.join(directory, f"{prefix}-cert.pem"))
    cert.private_key_pem.write_to_path(os.path.join(directory, f"{prefix}-key.pem"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """server/: the server's directory; client/: a client of the same CA; stranger/: a client of another CA."""
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    dirs = {name: str(root / name) for name in ("server", "client", "stranger", "anonymous")}
    for d in dirs.values():
        os.makedirs(d)
    for name in ("server", "client", "anonymous"):
        ca.cert_pem.write_to_path(os.path.join(dirs[name], "ca-cert.pem"))
    ca.cert_pem.write_to_path(os.path.join(dirs["stranger"], "ca-cert.pem"))   # trusts the server...
    _write_pair(ca.issue_cert("localhost", "127.0.0.1"), dirs["server"], "server")
    _write_pair(ca.issue_cert("client.example"), dirs["client"], "client")
    _write_pair(other.issue_cert("stranger.example"), dirs["stranger"], "client")   # ...but is not its CA's
    return dirs


def serve(tmp_path, *args):
    return ServerProcess(str(tmp_path / "serve"), unix=False, tcp="127.0.0.1:0", extra_args=list(args)).start()


def hostport(server):
    endpoint = next(e for e in server.endpoints if e.startswith("nbd://"))
    host, port = endpoint[len("nbd://"):].rsplit(":", 1)
    return host, int(port)


def nbds(server, certs, export="lun0"):
    host, port = hostport(server)
    return f"nbds://{host}:{port}/{export}?tls-certificates={certs}"


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def qemu_io(server, certs, *commands):
    host, port = hostport(server)
    cmd = ["qemu-io", "--object", f"tls-creds-x509,id=tls0,dir={certs},endpoint=client", "--image-opts",
           f"driver=nbd,host={host},port={port},export=lun0,tls-creds=tls0"]
    for c in commands:
        cmd += ["-c", c]
    return run(cmd)


def test_require_serves_tls_clients_and_refuses_the_others(tmp_path, pki):
    with serve(tmp_path, "--tls=require", "--tls-certificates", pki["server"]) as server:
        assert any(line.startswith("TLS: require") for line in server.output)
        got = run(["nbdinfo", "--size", nbds(server, pki["client"])])
        assert got.returncode == 0, got.stderr
        assert int(got.stdout) == 256 << 20
        # qemu-io over TLS: a write and its read back
        got = qemu_io(server, pki["client"], "write -P 0x5a 1M 64k", "read -P 0x5a 1M 64k")
        assert got.returncode == 0 and "Pattern verification failed" not in got.stdout, got.stdout + got.stderr
        # a plain client: every option but STARTTLS and ABORT is refused with NBD_REP_ERR_TLS_REQD
        host, port = hostport(server)
        raw = RawClient((host, port))
        raw.start()
        for opt in ("LIST", "GO", "INFO", "STRUCTURED_REPLY"):
            raw.option(OPT[opt], RawClient.info_data("lun0") if opt in ("GO", "INFO") else b"")
            reply_opt, reply, _data = raw.opt_reply()
            assert (reply_opt, reply) == (OPT[opt], ERR_TLS_REQD)
        raw.option(OPT["EXPORT_NAME"], b"lun0")        # no error reply exists for it: dropped
        assert raw.is_closed()
        raw.close()
        plain = run(["nbdinfo", "--size", f"nbd://{host}:{port}/lun0"])
        assert plain.returncode != 0


def test_on_serves_plain_and_tls_clients_the_same_bytes(tmp_path, pki):
    with serve(tmp_path, "--tls=on", "--tls-certificates", pki["server"]) as server:
        host, port = hostport(server)
        got = qemu_io(server, pki["client"], "write -P 0x33 0 128k")
        assert got.returncode == 0, got.stderr
        out = tmp_path / "copy.img"
        got = run(["nbdcopy", f"nbd://{host}:{port}/lun0", str(out)])
        assert got.returncode == 0, got.stderr
        with open(out, "rb") as fh:
            assert fh.read(128 << 10) == b"\x33" * (128 << 10)
        assert run(["nbdinfo", "--size", nbds(server, pki["client"])]).returncode == 0


def test_verify_peer_refuses_a_client_without_a_certificate_of_the_ca(tmp_path, pki):
    with serve(tmp_path, "--tls=require", "--tls-certificates", pki["server"], "--tls-verify-peer") as server:
        assert run(["nbdinfo", "--size", nbds(server, pki["client"])]).returncode == 0
        assert run(["nbdinfo", "--size", nbds(server, pki["stranger"])]).returncode != 0
        assert run(["nbdinfo", "--size", nbds(server, pki["anonymous"])]).returncode != 0
        # the refused clients disturbed nothing
        assert run(["nbdinfo", "--size", nbds(server, pki["client"])]).returncode == 0


def test_starttls_on_a_server_without_tls_is_unsupported_and_the_handshake_goes_on(tmp_path):
    with serve(tmp_path) as server:
        raw = RawClient(hostport(server))
        raw.start()
        raw.option(OPT["STARTTLS"])
        reply_opt, reply, data = raw.opt_reply()
        assert (reply_opt, reply) == (OPT["STARTTLS"], REP["ERR_UNSUP"]) and b"TLS is off" in data
        raw.option(OPT["LIST"])
        assert raw.opt_reply()[1] == REP["SERVER"]
        raw.close()


@pytest.mark.parametrize("args, words", [
    (["--tls=require"], "needs a certificate directory"),
    (["--tls=on", "--tls-certificates", "/nonexistent/certs"], "does not exist"),
    (["--tls-verify-peer"], "needs --tls=on"),
])
def test_bad_tls_settings_are_refused_at_start(tmp_path, args, words):
    got = run([*ServerProcess(str(tmp_path)).command()[:4], "--listen", "127.0.0.1:0", *args])
    assert got.returncode != 0 and words in got.stderr, got.stderr


def test_a_certificate_directory_without_the_key_is_named(tmp_path, pki):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(os.path.join(pki["server"], "server-cert.pem"), partial)
    got = run([*ServerProcess(str(tmp_path)).command()[:4], "--listen", "127.0.0.1:0", "--tls=on",
               "--tls-certificates", str(partial)])
    assert got.returncode != 0 and "server-key.pem" in got.stderr, got.stderr


def test_option_data_on_starttls_is_invalid(tmp_path, pki):
    with serve(tmp_path, "--tls=on", "--tls-certificates", pki["server"]) as server:
        raw = RawClient(hostport(server))
        raw.start()
        raw.option(OPT["STARTTLS"], struct.pack(">I", 1))
        assert raw.opt_reply()[1] == REP["ERR_INVALID"]
        raw.close()
