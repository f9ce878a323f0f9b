"""Device links over TLS (link+tls://): the far side's [device] tls_certificates makes every link speak TLS.

Certificates are made in the test run (trustme), laid out as the NBD edge's TLS lays them out. A
primary with the CA and a client certificate links and its TRIGGERs cut the far pool; one whose
client certificate another CA signed is refused by a far side that verifies its peers.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trustme

from nbd_raw import RawClient
from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient
from test_link_serve import SIZE, far_status, link_endpoint, nbdcopy

pytestmark = pytest.mark.xdist_group("link")


def _pair(cert, directory, prefix):
    cert.cert_chain_pems[0].write_to_path(os.path.join(directory, f"{prefix}-cert.pem"))
    cert.private_key_pem.write_to_path(os.path.join(directory, f"{prefix}-key.pem"))


@pytest.fixture
def pki(tmp_path):
    ca, other = trustme.CA(), trustme.CA()
    dirs = {name: str(tmp_path / name) for name in ("server", "client", "stranger")}
    for d in dirs.values():
        os.makedirs(d)
        ca.cert_pem.write_to_path(os.path.join(d, "ca-cert.pem"))
    _pair(ca.issue_cert("localhost", "127.0.0.1"), dirs["server"], "server")
    _pair(ca.issue_cert("near.example"), dirs["client"], "client")
    _pair(other.issue_cert("stranger.example"), dirs["stranger"], "client")
    return dirs


def start_far(tmp_path, pki) -> ServerProcess:
    path = tmp_path / "far.toml"
    path.write_text(f'[device]\nlisten = "127.0.0.1:0"\ntls_certificates = "{pki["server"]}"\ntls_verify_peer = true\n\n'
                    f'[[lun]]\nname = "lun0"\nurl = "ram://far?size={SIZE}"\n\n'
                    f'[lun.pool]\nmembers = ["ram://f0?size={SIZE}", "ram://f1?size={SIZE}"]\n')
    return ServerProcess(str(tmp_path / "far"), config=str(path)).start()


def near_config(tmp_path, endpoint: str, certs: str) -> str:
    path = tmp_path / f"near-{os.path.basename(certs)}.toml"
    path.write_text(f'[[lun]]\nname = "lun0"\nurl = "ram://near?size={SIZE}"\n\n'
                    f'[lun.backup]\nurl = "{endpoint}/lun0?tls-certificates={certs}&reconnect=1s"\n')
    return str(path)


def test_a_tls_link_carries_the_stream_and_its_triggers(tmp_path, pki):
    far = start_far(tmp_path, pki)
    near = None
    try:
        endpoint = link_endpoint(far)
        assert endpoint.startswith("link+tls://")
        near = ServerProcess(str(tmp_path / "near"), config=near_config(tmp_path, endpoint, pki["client"])).start()
        RawClient(near.socket).connect("lun0").write(0, b"\x5a" * 65536)
        assert ControlClient(near.control).ask("TRIGGER over-tls").startswith("OK 1 ")
        expected = b"\x5a" * 65536 + bytes(SIZE - 65536)
        assert nbdcopy(far, "lun0.t1") == expected
        assert far_status(far)["device_links"]["luns"][0]["cuts"] == 1
    finally:
        if near is not None:
            near.stop()
        far.stop()


def test_a_client_certificate_of_another_ca_is_refused(tmp_path, pki):
    far = start_far(tmp_path, pki)
    try:
        config = near_config(tmp_path, link_endpoint(far), pki["stranger"])
        got = subprocess.run([sys.executable, "-m", "splitpoint", "serve", "--config", config,
                              "--socket", str(tmp_path / "stranger.sock")], capture_output=True, text=True, timeout=60)
        assert got.returncode == 1 and "cannot start the controller" in got.stderr, got.stderr
        assert far_status(far)["device_links"]["luns"] == []
    finally:
        far.stop()
