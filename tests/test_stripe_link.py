"""A striped primary backup LUN over two real `splitpoint serve --device-listen` processes (claims 8, 9).

The near LUN's ``[lun.backup]`` has ``layout = "stripe"`` over two device links: each far controller
receives its stripe of the mirror stream, and every TRIGGER in sequence on each part's link, so each
far pool cuts its own backup there. Each far ``part.t<id>`` (read with nbdcopy) must be exactly that
part's stripe units of a replay of the writes before the cut (tests/reference.py).
"""
from __future__ import annotations

import os
import random
import subprocess
import time

import pytest

from splitpoint.demo import ServerProcess
from splitpoint.firmware.frontend.control import ControlClient
from splitpoint.hal.stripe import StripeLayout
from test_link_serve import link_endpoint

pytestmark = pytest.mark.xdist_group("link")

PART = 1 << 20
STRIPE = 16 << 10


def nbdcopy(server: ServerProcess, export: str, size: int, timeout: float = 20.0) -> bytes:
    """The bytes of ``export`` through nbdcopy, once the server exports it."""
    deadline = time.monotonic() + timeout
    while True:
        got = subprocess.run(["nbdcopy", server.uri(export), "-"], capture_output=True, timeout=60)
        if got.returncode == 0 and len(got.stdout) == size:
            return got.stdout
        assert time.monotonic() < deadline, f"{export}: {got.stderr.decode()[-500:]}"
        time.sleep(0.05)


def test_each_far_part_cuts_its_stripe_of_the_writes_before_each_trigger(tmp_path):
    fars = []
    near = None
    try:
        for i in range(2):
            path = tmp_path / f"far{i}.toml"
            path.write_text(f'[device]\nlisten = "127.0.0.1:0"\n\n[[lun]]\nname = "p{i}"\n'
                            f'url = "ram://p{i}?size={PART}"\n\n[lun.pool]\nmembers = ['
                            + ", ".join(f'"ram://p{i}b{j}?size={PART}"' for j in range(3)) + "]\n")
            os.makedirs(tmp_path / f"far{i}")
            fars.append(ServerProcess(str(tmp_path / f"far{i}"), config=str(path)).start())
        parts = ", ".join(f'"{link_endpoint(f)}/p{i}"' for i, f in enumerate(fars))
        path = tmp_path / "near.toml"
        path.write_text(f'[[lun]]\nname = "lun0"\nurl = "ram://near?size={2 * PART}"\n\n'
                        f'[lun.backup]\nlayout = "stripe"\nstripe = "16K"\nparts = [{parts}]\n')
        os.makedirs(tmp_path / "near")
        near = ServerProcess(str(tmp_path / "near"), config=str(path)).start()
        control = ControlClient(near.control)
        deadline = time.monotonic() + 30   # the striped backup LUN first resyncs in full (its parts persist)
        while control.status()["luns"][0]["backup_lun"]["state"] != "in-sync":
            assert time.monotonic() < deadline, control.status()["luns"][0]["backup_lun"]
            time.sleep(0.05)
        layout = StripeLayout(STRIPE, 2)
        rng = random.Random(7)
        image = bytearray(2 * PART)
        for t in range(1, 51):
            off = rng.randrange(0, 2 * PART - 65536, 4096)
            ln = rng.choice([4096, 20480, 65536])
            data = bytes([t]) * ln
            subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {t} {off} {ln}", near.uri("lun0")],
                           check=True, capture_output=True, timeout=30)
            image[off:off + ln] = data
            answer = control.ask(f"TRIGGER s{t}")
            assert answer.startswith(f"OK {t} seq="), answer
            if t % 10 == 0 or t == 1:   # the far pools keep the two newest cuts
                want = [bytearray(PART), bytearray(PART)]
                for part, poff, loff, n in layout.split(0, 2 * PART):
                    want[part][poff:poff + n] = image[loff:loff + n]
                for i, far in enumerate(fars):
                    assert nbdcopy(far, f"p{i}.t{t}", PART) == bytes(want[i]), f"far part {i} t{t}"
    finally:
        if near is not None:
            near.stop()
        for far in fars:
            far.stop()
