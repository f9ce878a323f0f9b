"""The board side of a session (BoardEngine) without a pty: ordering, duplicates, NAKs, errors."""
import pytest

from splitpoint.hal import wire
from splitpoint.boards.emulator import BoardEngine
from splitpoint.hal import open_device
from splitpoint.hal.filters import wrap_device
from splitpoint.hal.wire import ErrorCode, Flag, MsgType

fr = wire.frame


def frm(msg):
    return fr.decode_frame(msg.encode())


@pytest.fixture
def engine():
    triggers = []
    eng = BoardEngine(open_device("ram://?size=1M&block=512"), "test-board", window=4, max_transfer=4096,
                      on_trigger=lambda *a: triggers.append(a))
    eng.triggers = triggers
    return eng


def hello(engine, session=0x1234, first=10):
    (ack,) = engine.on_frame(frm(wire.Info(seq=99, session=session, first_seq=first)))
    return ack


def test_handshake_new_then_resumed(engine):
    ack = hello(engine)
    assert isinstance(ack, wire.Ack) and ack.seq == 99 and not ack.flags & Flag.RESUMED
    assert (ack.info.board_id, ack.info.next_seq, ack.info.window, ack.info.capacity) == ("test-board", 10, 4, 1 << 20)
    engine.on_frame(frm(wire.Flush(seq=10)))
    again = hello(engine, first=500)
    assert again.flags & Flag.RESUMED and again.info.next_seq == 11  # first_seq ignored on resume
    other = hello(engine, session=0x9999, first=500)
    assert not other.flags & Flag.RESUMED and other.info.next_seq == 500


def test_requests_before_handshake_get_no_session(engine):
    (err,) = engine.on_frame(frm(wire.Flush(seq=1)))
    assert isinstance(err, wire.Error) and err.code == ErrorCode.NO_SESSION
    (err,) = engine.on_frame(frm(wire.Info(seq=1, session=0)))
    assert err.code == ErrorCode.BAD_PAYLOAD


def test_out_of_order_arrivals_execute_in_seq_order(engine):
    hello(engine)
    first = engine.on_frame(frm(wire.Write(seq=11, offset=0, data=b"B" * 512)))
    assert len(first) == 1 and isinstance(first[0], wire.Nak) and first[0].expected == 10
    assert first[0].received == 0b1
    assert engine.on_frame(frm(wire.Write(seq=12, offset=0, data=b"C" * 512))) == []  # one NAK per gap
    replies = engine.on_frame(frm(wire.Write(seq=10, offset=0, data=b"A" * 512)))
    assert [r.seq for r in replies] == [10, 11, 12]
    assert engine.device.read(0, 512) == b"C" * 512  # the last in seq order wins, not the last to arrive


def test_duplicate_is_replayed_not_rerun(engine):
    hello(engine)
    writes = []
    orig = engine.device.write
    engine.device.write = lambda *a, **k: (writes.append(a[0]), orig(*a, **k))
    (ack,) = engine.on_frame(frm(wire.Write(seq=10, offset=512, data=b"x" * 512)))
    (again,) = engine.on_frame(frm(wire.Write(seq=10, flags=Flag.RETRANSMIT, offset=512, data=b"x" * 512)))
    assert ack.seq == again.seq == 10 and again.flags & Flag.REPLAY
    assert writes == [512]
    (rd,) = engine.on_frame(frm(wire.Read(seq=11, offset=512, length=512)))
    engine.on_frame(frm(wire.Write(seq=12, offset=512, data=b"y" * 512)))
    (rd2,) = engine.on_frame(frm(wire.Read(seq=11, offset=512, length=512)))
    assert rd2.data == rd.data == b"x" * 512  # a replayed READ returns what it read in its turn


def test_stale_window_and_buffered_duplicates(engine):
    hello(engine, first=1)
    for s in range(1, 8):
        engine.on_frame(frm(wire.Flush(seq=s)))
    (stale,) = engine.on_frame(frm(wire.Flush(seq=1)))  # cache holds the last 4 only
    assert stale.code == ErrorCode.STALE
    (win,) = engine.on_frame(frm(wire.Flush(seq=8 + 4)))
    assert win.code == ErrorCode.WINDOW
    engine.on_frame(frm(wire.Flush(seq=9)))
    assert engine.on_frame(frm(wire.Flush(seq=9))) == []
    assert engine.stats["duplicates_buffered"] == 1


def test_malformed_request_takes_its_turn(engine):
    hello(engine, first=1)
    bad = fr.encode_frame(MsgType.READ, 0, 2, bytes(5))  # seq 2, payload too short
    assert [type(r) for r in engine.on_frame(fr.decode_frame(bad))] == [wire.Nak]
    replies = engine.on_frame(frm(wire.Flush(seq=1)))
    assert [(type(r).__name__, r.seq) for r in replies] == [("Ack", 1), ("Error", 2)]
    assert replies[1].code == ErrorCode.BAD_PAYLOAD
    (unknown,) = engine.on_frame(fr.decode_frame(fr.encode_frame(0x42, 0, 3)))
    assert unknown.code == ErrorCode.UNKNOWN_TYPE
    (version,) = engine.on_frame(fr.decode_frame(fr.encode_frame(MsgType.FLUSH, 0, 4, b"", version=7)))
    assert version.code == ErrorCode.UNSUPPORTED_VERSION


def test_medium_errors_map_to_codes(engine):
    hello(engine, first=1)
    cases = [(wire.Read(seq=1, offset=1 << 20, length=512), ErrorCode.OUT_OF_RANGE),
             (wire.Read(seq=2, offset=100, length=512), ErrorCode.MISALIGNED),
             (wire.Read(seq=3, offset=0, length=8192), ErrorCode.TOO_LARGE),
             (wire.Write(seq=4, offset=0, data=b""), ErrorCode.MISALIGNED),
             (wire.Trim(seq=5, offset=2**63, length=512), ErrorCode.OUT_OF_RANGE)]
    for msg, code in cases:
        (err,) = engine.on_frame(frm(msg))
        assert isinstance(err, wire.Error) and err.code == code and err.seq == msg.seq
    engine.device = wrap_device(engine.device, "error=1", seed=1)
    (err,) = engine.on_frame(frm(wire.Write(seq=6, offset=0, data=bytes(512))))
    assert err.code == ErrorCode.IO and "injected" in err.message


def test_read_only_medium(engine):
    eng = BoardEngine(open_device("ram://?size=1M&readonly=1"), "ro", window=2)
    hello(eng, first=1)
    assert eng.info().features & wire.Feature.READ_ONLY
    (err,) = eng.on_frame(frm(wire.Write(seq=1, offset=0, data=bytes(512))))
    assert err.code == ErrorCode.READ_ONLY


def test_trim_zeroes_flush_trigger(engine):
    hello(engine, first=1)
    engine.on_frame(frm(wire.Write(seq=1, offset=0, data=b"\xff" * 2048)))
    engine.on_frame(frm(wire.Trim(seq=2, offset=0, length=512)))
    engine.on_frame(frm(wire.Trim(seq=3, flags=Flag.ZEROES | Flag.FUA, offset=1024, length=512)))
    (ack,) = engine.on_frame(frm(wire.Trigger(seq=4, id=5, label="cut")))
    engine.on_frame(frm(wire.Flush(seq=5)))
    assert ack.of == MsgType.TRIGGER and engine.triggers == [(5, "cut", 4)]
    assert engine.device.read(0, 2048) == bytes(512) + b"\xff" * 512 + bytes(512) + b"\xff" * 512


def test_rejected_frames_nak_and_replies_from_host_are_ignored(engine):
    assert engine.on_rejected_frame() == []  # no session yet: nothing to ask for
    hello(engine, first=3)
    (nak,) = engine.on_rejected_frame()
    assert nak.expected == 3
    assert engine.on_frame(frm(wire.Ack(seq=3, of=MsgType.FLUSH))) == []
    assert engine.on_frame(frm(wire.Nak(expected=1))) == []
    assert engine.on_frame(fr.decode_frame(fr.encode_frame(MsgType.ACK, 0, 1, b""))) == []


def test_seq_wraps_around(engine):
    hello(engine, first=0xFFFFFFFE)
    replies = []
    for s in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1):
        replies += engine.on_frame(frm(wire.Flush(seq=s)))
    assert [r.seq for r in replies] == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    (replay,) = engine.on_frame(frm(wire.Flush(seq=0xFFFFFFFF)))
    assert replay.flags & Flag.REPLAY


def test_bad_info_is_answered_at_once_and_unsequenced(engine):
    hello(engine, first=1)
    (err,) = engine.on_frame(fr.decode_frame(fr.encode_frame(MsgType.INFO, 0, 77, bytes(3))))
    assert err.seq == 77 and err.code == ErrorCode.BAD_PAYLOAD
    (ack,) = engine.on_frame(frm(wire.Flush(seq=1)))
    assert ack.seq == 1


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 255), st.integers(0, 0xFFFF),
                                 st.integers(0, 40), st.binary(max_size=40)), max_size=12),
       noise=st.binary(max_size=300))
def test_any_frame_or_noise_gets_an_answer_never_a_crash(frames, noise):
    """Arbitrary versions, types, flags, seqs and payloads, plus raw noise: the board only ever answers."""
    eng = BoardEngine(open_device("ram://?size=64K&block=512"), "fuzz", window=4, max_transfer=4096)
    hello(eng, first=1)
    dec = fr.FrameDecoder(4096 + 64)
    stream = noise + b"\x00" + b"".join(fr.encode_frame(t, f, s, p, v) for v, t, f, s, p in frames)
    for frame_tuple in dec.feed(stream):
        for reply in eng.on_frame(frame_tuple):
            assert reply.type in (MsgType.ACK, MsgType.ERROR, MsgType.NAK)
            assert wire.decode_wire(reply.encode()) == reply  # every answer is itself well-formed
    for _ in range(dec.rejected):
        assert [type(r) for r in eng.on_rejected_frame()] == [wire.Nak]


# ---- issue 4: under load a request got no reply however often it was resent ----
# The host resent every late request each rto, and the board answered every duplicate READ with a
# full replay queued behind the replies still waiting to go out; once that queue took longer than an
# rto to drain, each round of resends lengthened it and no reply ever came back in time.

def test_a_duplicate_whose_reply_is_still_queued_is_not_answered_twice(tmp_path):
    from splitpoint.boards.schema import load_board
    from splitpoint.boards.emulator import Emulator

    emu = Emulator(load_board("emu-usb-fs"), str(tmp_path / "link"), open_device("ram://?size=1M&block=512"),
                   rate=0)  # not started: the test plays the tx thread
    emu._deliver(wire.Info(seq=1, session=7, first_seq=10).encode())
    read = wire.Read(seq=10, offset=0, length=4096)
    emu._deliver(read.encode())
    read.flags |= Flag.RETRANSMIT
    for _ in range(5):
        emu._deliver(read.encode())
    assert [wire.decode_wire(item[-1]).seq for item in emu._txq] == [1, 10]  # one READ reply, not six
    assert emu.stats["replays"] == 5 and emu.stats["replays_still_queued"] == 5
    while emu._txq:
        emu._tx_one(emu._txq.popleft())  # the replies leave (nowhere: no pty), so a duplicate is answered again
    emu._deliver(read.encode())
    (item,) = emu._txq
    replay = wire.decode_wire(item[-1])
    assert replay.seq == 10 and replay.flags & Flag.REPLAY and replay.data == bytes(4096)


class _SilentBoard:
    """A pyserial-like port whose board answers INFO and then never answers anything: records each send."""

    def __init__(self):
        self.engine = BoardEngine(open_device("ram://?size=1M&block=512"), "silent", window=4, max_transfer=4096)
        self.decoder = fr.FrameDecoder()
        self.replies = bytearray()
        self.sent = []  # (seq, flags) of each request frame the host wrote
        self.reads = 0
        self.in_waiting = 0

    def write(self, data):
        for f in self.decoder.feed(bytes(data)):
            msg = wire.decode_message(f)
            if isinstance(msg, wire.Info):
                self.replies += b"".join(r.encode() for r in self.engine.on_frame(f))
            else:
                self.sent.append((msg.seq, msg.flags))
        self.in_waiting = len(self.replies)
        return len(data)

    def read(self, n):
        import time

        self.reads += 1
        out, self.replies[:] = bytes(self.replies[:n]), self.replies[n:]
        self.in_waiting = len(self.replies)
        if not out:
            time.sleep(0.002)
        return out

    def reset_input_buffer(self):
        pass

    def close(self):
        pass


def test_retransmissions_back_off_exponentially_and_the_bound_counts_them(monkeypatch):
    import threading
    import time
    import types

    from splitpoint.hal import DeviceGoneError, serial_dev

    now = [1000.0]
    monkeypatch.setattr(serial_dev, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=time.sleep))
    port = _SilentBoard()
    dev = serial_dev.SerialDevice("silent", rate=10**15, rto=1.0, retries=5, serial_factory=lambda: port)
    lock = threading.Lock()

    def settle(sends: int):
        """Let the link thread check its timers at least twice, and the writer send ``sends`` frames."""
        with lock:
            reads = port.reads
        deadline = time.monotonic() + 30
        while port.reads < reads + 3 or len(port.sent) < sends:
            assert time.monotonic() < deadline, f"sent {port.sent}, waited for {sends}"
            time.sleep(0.005)

    try:
        pending = dev.submit(wire.Flush())
        settle(1)
        waits = []  # rtos the request waited before each resend
        for _ in range(5):
            waited = 0
            while len(port.sent) == len(waits) + 1:
                now[0] += 0.5
                waited += 0.5
                settle(len(waits) + 1)
            waits.append(waited)
        # the first half-second step past 1, 2, 4, 8, 8 rtos (the bytes in flight put the rto a hair above
        # 1 s): doubled each time up to the cap, where a fixed timer resent every 1.5 s
        assert waits == [1.5, 2.5, 4.5, 8.5, 8.5]
        assert [s for s, _ in port.sent] == [pending.seq] * 6
        assert all(f & Flag.RETRANSMIT for _, f in port.sent[1:])
        for _ in range(17):  # the last try's 8 rtos, in halves
            now[0] += 0.5
            settle(6)
        with pytest.raises(DeviceGoneError, match=r"got no reply after 6 tries \(gives up within 31\.0 s\)"):
            pending.result(30)
        assert dev.give_up_after == pytest.approx((1 + 2 + 4 + 8 + 8 + 8) * dev.max_rto + 2 * serial_dev.TICK)
    finally:
        dev.close()
