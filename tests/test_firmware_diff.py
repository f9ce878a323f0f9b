"""Differential test: the C firmware (cffi host build) against the Python board over the Python model.

Hypothesis draws request streams (writes, trims, zeroings, flushes, reads, malformed requests, TRIGGER
frames and control-channel TRIGGERs) and a delivery for each (frames reordered inside the window and
duplicated). Both boards get exactly the same bytes on their wire interfaces:

- the C board: ``CBoard``, the firmware core with its own pool of backup regions;
- the Python board: ``boards.emulator.BoardEngine`` whose medium is a LUN of the Python controller
  (``splitpoint.firmware``) with a RAM pool of the same size, and whose TRIGGERs go to that controller.

Every reply must match (type, seq, flags, request type, error code, READ data, the BACKUPS list with
each backup's digest, BACKUP_READ data), and at the end the primary and every backup, read directly and
read over the wire with BACKUP_READ, must be byte-identical between the two and equal to the independent
reference replay (tests/reference.py). The default run draws 1,000 streams; the `slow` run twenty
times as many, three times as long; FIRMWARE_DIFF_EXAMPLES scales both (docs/firmware.md: running it
against your own firmware changes).
"""
import os
import random
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpoint.boards.emulator import BoardEngine, control
from splitpoint.boards.emulator.backups import ControllerBackups
from splitpoint.boards.firmware.cboard import CBoard
from splitpoint.config import loads
from splitpoint.firmware.controller import Controller
from splitpoint.hal import wire
from splitpoint.hal.contract import BlockDevice, check_io
from splitpoint.hal.wire import Flag, MsgType
from tests.reference import FLUSH, TRIGGER, TRIM, WRITE, ZEROES, ReferenceLun

BLOCK = 512
BLOCKS = 64
SIZE = BLOCK * BLOCKS
MAX_TRANSFER = 16384
FEATURES = 0x2F
FIRMWARE = 0x010000
BOARD_ID = "emu-usb-fs"
EXAMPLES = int(os.environ.get("FIRMWARE_DIFF_EXAMPLES", "1000"))


class ModelLun(BlockDevice):
    """A LUN of the Python controller as the Python board's medium: bounds checked as a HAL device does."""

    scheme = "model"

    def __init__(self, ctl, lun):
        self.ctl, self.lun = ctl, lun
        self.size, self.block_size = SIZE, BLOCK

    def read(self, offset, length):
        check_io(offset, length, self.size, self.block_size)
        return self.ctl.read(self.lun, offset, length)

    def write(self, offset, data, fua=False):
        check_io(offset, len(data), self.size, self.block_size)
        self.ctl.write(self.lun, offset, bytes(data), fua)

    def flush(self):
        self.ctl.flush(self.lun)

    def trim(self, offset, length):
        check_io(offset, length, self.size, self.block_size)
        self.ctl.trim(self.lun, offset, length)

    def write_zeroes(self, offset, length, fua=False):
        check_io(offset, length, self.size, self.block_size)
        self.ctl.write_zeroes(self.lun, offset, length)


class PythonBoard:
    """The Python board over the Python model: same wire interface as CBoard (bytes in, bytes out)."""

    def __init__(self, members: int, window: int):
        urls = ", ".join(f'"ram://m{i}?size={SIZE}&block={BLOCK}"' for i in range(members))
        self.ctl = Controller.from_config(loads(
            f'[[lun]]\nname = "lun0"\nurl = "ram://lun0?size={SIZE}&block={BLOCK}"\n\n'
            f'[lun.pool]\nmirror = "sync"\nmembers = [{urls}]\n'))
        self.lun = self.ctl.luns["lun0"]
        self.engine = BoardEngine(ModelLun(self.ctl, self.lun), BOARD_ID, window, MAX_TRANSFER, FEATURES, FIRMWARE,
                                  on_trigger=lambda tid, label, seq: self.ctl.trigger(self.lun, label=label or None),
                                  backups=ControllerBackups(self.ctl, self.lun))
        self.decoder = wire.frame.FrameDecoder(MAX_TRANSFER + 64)
        self._shim = types.SimpleNamespace(board=types.SimpleNamespace(id=BOARD_ID), trigger_listener=self._listen)

    def _listen(self, label):
        r = self.ctl.trigger(self.lun, label=label or None)
        return r.id, r.seq

    def data_in(self, data: bytes) -> bytes:
        out, before = [], self.decoder.rejected
        for frm in self.decoder.feed(data):
            out += self.engine.on_frame(frm)
        for _ in range(self.decoder.rejected - before):
            out += self.engine.on_rejected_frame()
        return b"".join(m.encode() for m in out)

    def control_line(self, line: str):
        return control.answer(self._shim, line)

    def close(self):
        self.ctl.close()


def replies(data: bytes) -> list:
    """The comparable part of every reply frame: error texts may differ, nothing else may."""
    out = []
    for chunk in data.split(b"\0")[:-1]:
        m = wire.decode_wire(chunk + b"\0")
        if isinstance(m, wire.Nak):
            out.append(("NAK", m.expected, m.received))
        elif isinstance(m, wire.Error):
            out.append(("ERROR", m.seq, int(m.flags), m.of, int(m.code)))
        else:
            out.append(("ACK", m.seq, int(m.flags), m.of, bytes(m.data), m.info))
    return out


blocks = st.integers(0, BLOCKS - 1)
lengths = st.integers(1, 16)
labels = st.text(st.characters(min_codepoint=0x00, max_codepoint=0x3010, blacklist_characters="\n\r",
                                blacklist_categories=("Cs",)), max_size=12)
OPS = st.one_of(
    st.tuples(st.just("write"), blocks, lengths, st.integers(1, 255), st.booleans()),
    st.tuples(st.just("trim"), blocks, lengths),
    st.tuples(st.just("zeroes"), blocks, lengths, st.booleans()),
    st.tuples(st.just("flush")),
    st.tuples(st.just("read"), blocks, lengths),
    st.tuples(st.just("trigger"), labels),
    st.tuples(st.just("control"), labels),
    st.tuples(st.just("bad"), st.sampled_from(["misaligned", "past_end", "too_large", "empty", "bad_flag"])),
    st.tuples(st.just("backups")),
    st.tuples(st.just("backup_read"), st.integers(0, 1000), blocks, lengths),
)


def request(op, seq, tid):
    """(wire message, reference effect) of one op."""
    kind = op[0]
    if kind == "write":
        _, b, n, byte, fua = op
        n = min(n, BLOCKS - b)
        data = bytes([byte]) * (n * BLOCK)
        return wire.Write(seq=seq, flags=Flag.FUA if fua else 0, offset=b * BLOCK, data=data), (WRITE, b * BLOCK, data)
    if kind == "trim":
        _, b, n = op
        n = min(n, BLOCKS - b)
        return wire.Trim(seq=seq, offset=b * BLOCK, length=n * BLOCK), (TRIM, b * BLOCK, n * BLOCK)
    if kind == "zeroes":
        _, b, n, fua = op
        n = min(n, BLOCKS - b)
        flags = Flag.ZEROES | (Flag.FUA if fua else 0)
        return wire.Trim(seq=seq, flags=flags, offset=b * BLOCK, length=n * BLOCK), (ZEROES, b * BLOCK, n * BLOCK)
    if kind == "flush":
        return wire.Flush(seq=seq), (FLUSH, 0, b"")
    if kind == "read":
        _, b, n = op
        return wire.Read(seq=seq, offset=b * BLOCK, length=min(n, BLOCKS - b) * BLOCK), None
    if kind == "trigger":
        return wire.Trigger(seq=seq, id=tid, label=op[1]), (TRIGGER, 0, b"")
    if kind == "backups":
        return wire.BackupList(seq=seq), None
    if kind == "backup_read":   # ids 0 and past the last TRIGGER name no backup; old ones may be recycled
        _, pick, b, n = op
        return wire.BackupRead(seq=seq, trigger_id=pick % (tid + 2), offset=b * BLOCK,
                               length=min(n, BLOCKS - b) * BLOCK), None
    bad = op[1]
    if bad == "misaligned":
        return wire.Write(seq=seq, offset=100, data=bytes(BLOCK)), None
    if bad == "past_end":
        return wire.Read(seq=seq, offset=SIZE - BLOCK, length=2 * BLOCK), None
    if bad == "too_large":
        return wire.Read(seq=seq, offset=0, length=MAX_TRANSFER + BLOCK), None
    if bad == "empty":
        return wire.Trim(seq=seq, offset=0, length=0), None
    return wire.Message(seq=seq, flags=Flag.ZEROES), None   # an INFO-typed frame is unsequenced: use FLUSH below


def run_stream(members, window, first_seq, ops, shuffle_seed, dup_rate):
    cb = CBoard(BOARD_ID, SIZE, BLOCK, window, MAX_TRANSFER, FEATURES, FIRMWARE, chunk_size=4096,
                pool_members=members)
    pb = PythonBoard(members, window)
    ref = ReferenceLun(SIZE)
    rng = random.Random(shuffle_seed)
    try:
        hello = wire.Info(seq=77, session=0xC0FFEE, first_seq=first_seq).encode()
        assert replies(cb.data_in(hello)) == replies(pb.data_in(hello))
        seq, triggers, batch = first_seq, 0, []

        def deliver():
            frames = [m.encode() if not (isinstance(m, wire.Message) and type(m) is wire.Message)
                      else wire.frame.encode_frame(MsgType.FLUSH, Flag.ZEROES, m.seq) for m in batch]
            order = list(range(len(frames)))
            rng.shuffle(order)                      # every frame of a batch lies inside the window
            stream = []
            for i in order:
                stream.append(frames[i])
                if rng.random() < dup_rate:         # a duplicate, as after a retransmission
                    stream.append(frames[rng.randrange(len(frames))])
            for chunk in stream:
                assert replies(cb.data_in(chunk)) == replies(pb.data_in(chunk))
            batch.clear()

        for op in ops:
            if op[0] == "control":
                deliver()
                c_answer, p_answer = cb.control_line(f"TRIGGER {op[1]}"), pb.control_line(f"TRIGGER {op[1]}")
                if op[1].strip() == "ON" or op[1].strip().startswith("ON "):   # the grammar's ON, not a label
                    assert c_answer == p_answer and c_answer.startswith("ERR TRIGGER ON ")
                    continue
                triggers += 1
                assert c_answer.split(" seq=")[0] == p_answer.split(" seq=")[0] == f"OK {triggers}"
                ref.apply(TRIGGER)
                continue
            if op[0] == "trigger":
                triggers += 1
            msg, effect = request(op, seq, triggers)
            if effect is not None:
                ref.apply(effect[0], effect[1], effect[2])
            batch.append(msg)
            seq = (seq + 1) & 0xFFFFFFFF
            if len(batch) == window or rng.random() < 0.3:
                deliver()
        deliver()
        for dup in range(min(3, window) + 1):   # late duplicates: replayed, never re-run (or older than the cache)
            old = wire.Flush(seq=(seq - 1 - dup) & 0xFFFFFFFF).encode()
            assert replies(cb.data_in(old)) == replies(pb.data_in(old))

        pb.ctl.settle()
        assert cb.primary() == pb.ctl.read(pb.lun, 0, SIZE) == bytes(ref.data)
        # the same backups, in the same regions: rotation picked the same least recently active members
        c_backups = {b["trigger_id"]: (b["label"], f"lun0.pool[{b['member']}]") for b in cb.backups()}
        p_backups = {b.trigger_id: (b.label or "", b.member) for b in pb.ctl.backups(pb.lun)}
        assert c_backups == p_backups
        for tid in c_backups:
            assert cb.read_backup(tid) == pb.ctl.read_backup(pb.lun, tid, 0, SIZE) == ref.snapshot(tid)
        # and over the wire: the same list, and every backup's bytes through BACKUP_READ
        listing = wire.BackupList(seq=seq).encode()
        c_list, p_list = replies(cb.data_in(listing)), replies(pb.data_in(listing))
        assert c_list == p_list
        entries = wire.unpack_backups(c_list[0][4])
        assert {e.trigger_id: e.label for e in entries} == {t: label for t, (label, _) in c_backups.items()}
        for e in entries:
            data = b""
            for off in range(0, SIZE, MAX_TRANSFER):
                seq = (seq + 1) & 0xFFFFFFFF
                got = wire.BackupRead(seq=seq, trigger_id=e.trigger_id, offset=off, length=MAX_TRANSFER).encode()
                c_read, p_read = replies(cb.data_in(got)), replies(pb.data_in(got))
                assert c_read == p_read and c_read[0][0] == "ACK"
                data += c_read[0][4]
            assert data == ref.snapshot(e.trigger_id) and e.digest == wire.frame.crc32c(data)
        status = cb.status()
        assert status["triggers"] == triggers and status["pool"]["rotations"] == triggers
    finally:
        pb.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.integers(1, 3), window=st.sampled_from([1, 3, 8, 32]),
       first_seq=st.sampled_from([1, 1000, 0xFFFFFFF8, 0xFFFFFFFE]),
       ops=st.lists(OPS, max_size=40), shuffle_seed=st.integers(0, 2**32 - 1),
       dup_rate=st.sampled_from([0.0, 0.1, 0.3]))
def test_c_firmware_and_python_model_agree_byte_for_byte(members, window, first_seq, ops, shuffle_seed, dup_rate):
    run_stream(members, window, first_seq, ops, shuffle_seed, dup_rate)


@pytest.mark.slow
@settings(max_examples=20 * EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(members=st.integers(1, 3), window=st.sampled_from([1, 2, 3, 8, 16, 32]),
       first_seq=st.integers(0, 2**32 - 1), ops=st.lists(OPS, max_size=120), shuffle_seed=st.integers(0, 2**32 - 1),
       dup_rate=st.sampled_from([0.0, 0.05, 0.3]))
def test_c_firmware_and_python_model_agree_on_long_streams(members, window, first_seq, ops, shuffle_seed, dup_rate):
    """The long run (`-m slow`): twenty times the streams, three times as long, any first seq."""
    run_stream(members, window, first_seq, ops, shuffle_seed, dup_rate)
