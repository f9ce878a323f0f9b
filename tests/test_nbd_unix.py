"""NBD over a Unix socket: the server widens each connection's send buffer for large READ replies."""
from __future__ import annotations

import socket
import time

from splitpoint import config
from splitpoint.firmware.controller import Controller
from splitpoint.firmware.frontend.nbd import connection as nbd
from splitpoint.firmware.frontend.service import ServiceThread

CONFIG = """
[[lun]]
name = "lun0"
url = "ram://lun0?size=4194304"
"""


def _wmem_max() -> int:
    try:
        with open("/proc/sys/net/core/wmem_max") as fh:
            return int(fh.read())
    except OSError:
        return nbd._SEND_BUFFER


def test_a_unix_connection_gets_a_send_buffer_that_holds_a_qd8_batch_of_256k_replies(tmp_path):
    path = str(tmp_path / "nbd.sock")
    ctl = Controller.from_config(config.loads(CONFIG))
    thread = ServiceThread(ctl, listen=None, socket_path=path, control=False)
    service = thread.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
            assert client.recv(18)[:8] == b"NBDMAGIC"      # the greeting: connection_made has run
            deadline = time.monotonic() + 10
            while not service.frontend.connections and time.monotonic() < deadline:
                time.sleep(0.01)
            (conn,) = service.frontend.connections
            sock = conn.transport.get_extra_info("socket")
            # Linux reports twice what was set; the request is capped at net.core.wmem_max
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(nbd._SEND_BUFFER, _wmem_max())
            assert nbd._SEND_BUFFER >= 8 * (256 << 10) + 8 * 16
    finally:
        thread.stop()
