"""Kill -9 campaign: a real `splitpoint serve` with file:// LUNs is SIGKILLed under load, again and again.

Each round starts the server on the same files and metadata_dir, drives it with a Python NBD
client (random-length writes that cross chunk boundaries, FLUSHes) and TRIGGERs on the control
channel, against a reference model of the acknowledged bytes; a timer SIGKILLs the server at a
random moment, with requests in flight. After each restart:
- nothing acknowledged before an acknowledged FLUSH is lost (each block holds the flushed bytes
  or a later write to it);
- no false backup: every exported backup equals the model at its cut;
- `<lun>.latest` is the newest cut still exported;
and over the campaign more than half of the cuts made at least 1 s before a kill (and not yet
recycled by rotation then) are still exported after the restart.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import threading
import time

import pytest

from nbd_raw import Closed, RawClient
from splitpoint.demo import ServerProcess

SIZE = 1 << 20
BLOCK = 512
CHUNK = 64 << 10
MEMBERS = 4
ROUNDS = int(os.environ.get("SPLITPOINT_CAMPAIGN_ROUNDS", "50"))
SEED = int(os.environ.get("SPLITPOINT_CAMPAIGN_SEED", "8"))
#: ends a hung campaign; the rounds themselves take about 2-3 minutes on 2 cores
DEADLINE = 900.0
_deadline = 0.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEADLINE + 60), pytest.mark.xdist_group("crash_campaign")]


def left() -> float:
    remaining = _deadline - time.monotonic()
    if remaining <= 0:
        pytest.fail(f"the campaign passed its {DEADLINE:.0f} s deadline")
    return remaining


def digest(data) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def write_config(tmp_path) -> str:
    img = tmp_path / "img"
    img.mkdir()
    members = ", ".join(f'"file://{img}/m{i}.img?size={SIZE}&create=1"' for i in range(MEMBERS))
    cfg = tmp_path / "campaign.toml"
    # a throttled resync (a full LUN in about 0.5 s) competes with the load, as in the field
    cfg.write_text(f"""
[controller]
chunk_size = "{CHUNK}"
digest_region = "256K"
metadata_dir = "{tmp_path / 'meta'}"

[resync]
rate = "2M"
slice = "256K"

[[lun]]
name = "lun0"
url = "file://{img}/lun0.img?size={SIZE}&create=1"

[lun.pool]
members = [{members}]
""")
    return str(cfg)


class Model:
    """The acknowledged bytes of the primary, and what a crash may leave of them."""

    def __init__(self, image: bytes):
        self.image = bytearray(image)
        self.flushed = bytes(image)      # the image at the last acknowledged FLUSH
        self.since_flush: list[tuple[int, bytes]] = []   # writes sent after it (acked or in flight)

    def sent(self, offset: int, data: bytes) -> None:
        self.since_flush.append((offset, data))

    def acked(self, offset: int, data: bytes) -> None:
        self.image[offset:offset + len(data)] = data

    def flush_acked(self) -> None:
        self.flushed = bytes(self.image)
        self.since_flush = []

    def check_durable(self, primary: bytes) -> None:
        """Every block holds its flushed bytes or those of a write sent after the FLUSH."""
        for b in range(0, SIZE, BLOCK):
            got = primary[b:b + BLOCK]
            if got == self.flushed[b:b + BLOCK]:
                continue
            later = [data[b - off:b - off + BLOCK] for off, data in self.since_flush if off <= b < off + len(data)]
            assert got in later, f"block at {b}: an acknowledged, flushed write was lost"


def read_export(server, name: str) -> bytes:
    c = RawClient(server.socket, timeout=left()).connect(name)
    try:
        return b"".join(c.read(off, 256 << 10) for off in range(0, SIZE, 256 << 10))
    finally:
        c.close()


class ControlLine:
    """The server's control channel as a TCP connection it opens to us (`--control socket://`).

    Not a pty: a pty's number is reused as soon as it is freed, and a host still reconnecting
    to a killed emulator elsewhere on this machine may open it through a dangling link."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.listener.getsockname()[1]}"
        self.conn = None
        self.buf = b""

    def accept(self) -> None:
        self.listener.settimeout(min(60.0, left()))
        self.conn, _ = self.listener.accept()
        self.buf = b""

    def ask(self, line: str) -> str:
        self.conn.settimeout(min(60.0, left()))
        self.conn.sendall(line.encode() + b"\n")
        while b"\n" not in self.buf:
            data = self.conn.recv(1 << 16)
            if not data:
                raise Closed("the control channel closed")
            self.buf += data
        answer, self.buf = self.buf.split(b"\n", 1)
        return answer.decode().rstrip("\r")

    def exported(self) -> list[tuple[int, int]]:
        """(trigger id, seq) of every backup the server exports now, from STATUS."""
        st = json.loads(self.ask("STATUS"))
        return [(b["trigger_id"], b["seq"]) for b in st["luns"][0]["backups"]]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def one_round(server, ctl: ControlLine, model: Model, rng: random.Random, cuts: dict, unanswered: set,
              kill_after: float) -> list[tuple[int, float]]:
    """Load the server until the timer kills it; returns (trigger id, time of its OK) of this round's cuts."""
    made: list[tuple[int, float]] = []
    killer = threading.Timer(kill_after, lambda: os.kill(server.pid, signal.SIGKILL))
    c = RawClient(server.socket, timeout=30).connect("lun0")
    next_trigger = time.monotonic() + rng.uniform(0.1, 0.5)
    killer.start()
    try:
        while True:
            now = time.monotonic()
            if now >= next_trigger:
                # the cut is the model as it is now: every write before it is acknowledged, none after
                image = digest(model.image)
                unanswered.add(image)     # if the kill swallows the OK
                answer = ctl.ask("TRIGGER campaign")
                # a cut that recycled the last complete copy says so after the seq (warning=...)
                m = re.fullmatch(r"OK (\d+) seq=(\d+)(?: warning=\S+(?: recycled=\S+)?)?", answer)
                assert m, answer
                cuts[int(m[1])] = (image, int(m[2]))
                made.append((int(m[1]), time.monotonic()))
                next_trigger = time.monotonic() + rng.uniform(0.6, 0.9)
                continue
            if rng.random() < 0.08:
                assert c.do("FLUSH").error == 0
                model.flush_acked()
                continue
            nblocks = rng.randrange(1, 3 * CHUNK // BLOCK)           # up to three chunks: crosses boundaries
            offset = rng.randrange(0, SIZE // BLOCK - nblocks + 1) * BLOCK
            data = rng.randbytes(nblocks * BLOCK)
            model.sent(offset, data)
            reply = c.do("WRITE", offset, payload=data)
            assert reply.error == 0, reply
            model.acked(offset, data)
    except (Closed, ConnectionError, OSError):
        pass   # the kill: whatever was in flight may or may not have been applied
    finally:
        c.close()
        ctl.close()
    server.proc.wait(left())   # killed by the timer (an error of ours above would fail the test instead)
    killer.cancel()
    return made


def test_kill9_campaign_under_load_keeps_backups_and_acknowledged_writes(tmp_path):
    global _deadline
    _deadline = time.monotonic() + DEADLINE
    cfg = write_config(tmp_path)
    rng = random.Random(SEED)
    model = Model(bytes(SIZE))
    cuts: dict = {}              # trigger id -> (digest of the model at the cut, its seq)
    unanswered: set = set()      # digests of the model at TRIGGERs of this round whose OK never came
    history: list[int] = []    # every cut's trigger id, in order
    eligible = survived = 0
    ctl = ControlLine()
    for round_no in range(ROUNDS + 1):
        server = ServerProcess(str(tmp_path / f"run{round_no}"), config=cfg,
                               extra_args=["--control", ctl.url]).start(timeout=min(60.0, left()))
        try:
            ctl.accept()
            primary = read_export(server, "lun0")
            if round_no:
                model.check_durable(primary)
            model = Model(primary)            # the next round starts from what the crash left
            backups = ctl.exported()
            ids = {tid for tid, _seq in backups}
            for tid, seq in backups:
                got = digest(read_export(server, f"lun0.t{tid}"))
                if tid in cuts:
                    want, want_seq = cuts[tid]
                    assert seq == want_seq, f"t{tid}: seq {seq}, cut at seq {want_seq}"
                    assert got == want, f"t{tid} is a false backup"
                else:
                    # its OK never came; it was sequenced after every write acknowledged before it was
                    # sent and before any later one: it holds the model as it was at one of those TRIGGERs
                    assert got in unanswered, f"t{tid} is a false backup (or was never cut)"
                    cuts[tid] = (got, seq)
            if backups:
                newest = max(ids)
                assert digest(read_export(server, "lun0.latest")) == cuts[newest][0], "latest is not the newest cut"
            if round_no:
                for tid in recent:
                    eligible += 1
                    survived += tid in ids
            if round_no == ROUNDS:
                break
            unanswered = set()
            kill_after = rng.uniform(1.2, 2.6)
            started = time.monotonic()
            made = one_round(server, ctl, model, rng, cuts, unanswered, kill_after)
            killed = started + kill_after
            history += [tid for tid, _t in made]
            # cuts at least 1 s old at the kill whose member rotation had not recycled yet
            alive = history[-(MEMBERS - 1):]
            recent = [tid for tid, t in made if killed - t >= 1.0 and tid in alive]
        except Exception as exc:
            raise AssertionError(f"round {round_no}: {exc}\n--- serve log ---\n{server.log()[-4000:]}") from exc
        finally:
            ctl.close()
            if server.proc.poll() is None:
                server.stop(signal.SIGKILL)
    print(f"\ncuts made >= 1 s before a kill, still exported after the restart: {survived} of {eligible}")
    assert eligible >= ROUNDS // 2, f"only {eligible} cuts were old enough at a kill to count"
    assert survived * 2 > eligible, f"only {survived} of {eligible} cuts made >= 1 s before a kill survived it"
