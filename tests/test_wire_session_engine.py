"""The session engine (hal/wire/session.py) with both ends wired back to back in memory.

No pty, no thread, no sleep: a virtual clock drives the timers, and a lossy
in-memory line drops, duplicates, delays (so reorders) and corrupts frames in
both directions, and may drop the whole link. Every request must be executed
exactly once, in seq order, and answered exactly once with what its turn
produced; the window never exceeds its bound; a bad frame gets its specific
error.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpoint.hal import DeviceGoneError, OutOfRangeError
from splitpoint.hal.wire import ErrorCode, Flag, MsgType
from splitpoint.hal.wire import messages as wire
from splitpoint.hal.wire.session import (DOWN, HANDSHAKING, UP, BoardResetError, DeviceSession, HostSession,
                                         WireProtocolError, backoff)

BLOCK = 512
BLOCKS = 16
LATENCY = 0.001  # seconds a frame takes on the line
STEP = 0.005  # the virtual clock's tick


def tag(msg):
    """What tells one request of a test stream from the others once it crossed the line."""
    if isinstance(msg, wire.Write):
        return ("write", msg.offset, msg.data[:1])
    if isinstance(msg, wire.Trigger):
        return ("trigger", msg.id)
    return None


class MemoryBoard:
    """A device side: DeviceSession over a bytearray, recording what it executed in order."""

    def __init__(self, window=4, max_transfer=4096):
        self.medium = bytearray(BLOCK * BLOCKS)
        self.executed = []  # (seq, type, offset)
        self.tags = []  # tag() of each request executed
        self.max_transfer = max_transfer
        self.session = DeviceSession(window, self.execute, self.describe, max_transfer + 64)

    def describe(self):
        return wire.BoardInfo(len(self.medium), BLOCK, self.max_transfer, self.session.window, board_id="mem")

    def execute(self, msg):
        self.executed.append((msg.seq, msg.type, getattr(msg, "offset", None)))
        self.tags.append(tag(msg))
        if isinstance(msg, (wire.Read, wire.Write)):
            length = msg.length if isinstance(msg, wire.Read) else len(msg.data)
            if msg.offset + length > len(self.medium):
                return wire.Error(seq=msg.seq, of=msg.type, code=ErrorCode.OUT_OF_RANGE, message="past the end")
        if isinstance(msg, wire.Read):
            return wire.Ack(seq=msg.seq, of=MsgType.READ, data=bytes(self.medium[msg.offset:msg.offset + msg.length]))
        if isinstance(msg, wire.Write):
            self.medium[msg.offset:msg.offset + len(msg.data)] = msg.data
        return wire.Ack(seq=msg.seq, of=msg.type)


class Line:
    """Frames in flight one way, each delivered at its time; ``fates`` decide what happens to the next ones."""

    def __init__(self, fates):
        self.fates = fates
        self.flight = []  # (deliver_at, order, bytes, corrupted)
        self.order = 0
        self.corrupted = 0  # corrupted frames delivered

    def send(self, data: bytes, now: float):
        fate, arg = self.fates.pop(0) if self.fates else ("ok", 0)
        at = now + LATENCY
        bad = fate == "corrupt"
        if fate == "drop":
            return
        if fate == "delay":
            at += arg * STEP  # later frames overtake it: reordering
        if fate == "corrupt":
            raw = bytearray(data)
            raw[arg % max(1, len(raw) - 1)] ^= 0x5A  # never the delimiter; may make a 0x00: the frame is torn in two
            data = bytes(raw)
        self._put(at, data, bad)
        if fate == "dup":
            self._put(at + arg * STEP, data, bad)

    def _put(self, at, data, bad):
        self.order += 1
        self.flight.append((at, self.order, data, bad))

    def due(self, now: float) -> list:
        ready = sorted(f for f in self.flight if f[0] <= now)
        self.flight = [f for f in self.flight if f[0] > now]
        self.corrupted += sum(bad for *_, bad in ready)
        return [data for _, _, data, _ in ready]


LINE_FATES = ["ok", "ok", "drop", "dup", "delay", "corrupt"]
FATES = st.tuples(st.sampled_from(LINE_FATES + ["unplug"]), st.integers(0, 40))  # host to board
REPLY_FATES = st.tuples(st.sampled_from(LINE_FATES), st.integers(0, 40))  # board to host


def make_requests(kinds):
    """Requests to submit, in order; writes overlap so only seq order gives the right bytes."""
    reqs = []
    for i, (kind, block) in enumerate(kinds):
        off = block % BLOCKS * BLOCK
        if kind == "write":
            reqs.append(wire.Write(offset=off, data=bytes([i % 251 + 1]) * BLOCK))
        elif kind == "read":
            reqs.append(wire.Read(offset=off, length=BLOCK))
        elif kind == "flush":
            reqs.append(wire.Flush())
        elif kind == "trigger":
            reqs.append(wire.Trigger(id=i, label=f"t{i}"))
        else:
            reqs.append(wire.Write(offset=len(MemoryBoard().medium), data=bytes(BLOCK)))  # past the end
    return reqs


def expected_replies(reqs):
    """What each request's reply must carry, applying them in submission order to a reference medium."""
    medium = bytearray(BLOCK * BLOCKS)
    out = []
    for msg in reqs:
        if isinstance(msg, wire.Write) and msg.offset >= len(medium):
            out.append(OutOfRangeError)
        elif isinstance(msg, wire.Write):
            medium[msg.offset:msg.offset + BLOCK] = msg.data
            out.append(None)
        elif isinstance(msg, wire.Read):
            out.append(bytes(medium[msg.offset:msg.offset + BLOCK]))
        else:
            out.append(None)
    return out, medium


def run(host, board, reqs, up_fates, down_fates, budget=20_000):
    """Drive both ends on the virtual clock until every request is answered; returns the completions."""
    done = []
    host.on_complete = done.append
    up, down = Line(up_fates), Line(down_fates)
    now = 0.0
    host.connect(now)
    pending = list(reqs)
    submitted = []
    unplugged_until = None
    for _ in range(budget):
        if len(done) == len(reqs):
            break
        now += STEP
        if unplugged_until is not None and now >= unplugged_until:
            unplugged_until = None
            board.session.reset_link()
            host.connect(now)
        while pending and host.up and host.can_submit():
            submitted.append(host.submit(pending.pop(0), BLOCK, now))
        assert len(host.out) <= host.window
        if host.out:
            seqs = list(host.out)
            assert wire.seq_after(seqs[-1], seqs[0]) < host.window  # the window rule, not only its count
        host.tick(now)
        while (data := host.next_frame(now)) is not None:
            if up.fates and up.fates[0][0] == "reset":  # the board loses power: no session, no reply cache
                up.fates.pop(0)
                board.session.session = None
            if up.fates and up.fates[0][0] == "unplug":
                up.fates.pop(0)
                up.flight.clear()
                down.flight.clear()
                host.link_lost(now)
                unplugged_until = now + 3 * STEP
                break
            up.send(data, now)
        for data in up.due(now):
            for reply in board.session.feed(data):
                down.send(reply.encode(), now)
        for data in down.due(now):
            if unplugged_until is None:
                host.feed(data, now)
        if host.state == DOWN and unplugged_until is None:  # NO_SESSION or a handshake that failed: reconnect
            unplugged_until = now + STEP
            host.link_lost(now)
    else:
        pytest.fail(f"{len(done)} of {len(reqs)} answered; state {host.state}, stats {dict(host.stats)}")
    # every corrupted frame that reached the board was rejected by the frame layer (CRC, COBS or length)
    assert board.session.decoder.rejected >= up.corrupted
    return done, submitted


@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(st.tuples(st.sampled_from(["write", "write", "read", "flush", "trigger", "bad"]),
                                st.integers(0, 3)), min_size=1, max_size=40),
       up_fates=st.lists(FATES, max_size=30), down_fates=st.lists(REPLY_FATES, max_size=30),
       board_window=st.integers(1, 8), host_window=st.integers(1, 32))
def test_every_request_is_executed_once_in_order_and_answered_once(kinds, up_fates, down_fates, board_window,
                                                                    host_window):
    reqs = make_requests(kinds)
    board = MemoryBoard(window=board_window)
    host = HostSession("mem", window=host_window, rto=0.05, rate=10**9, retries=40, session=0x51, first_seq=7)
    done, submitted = run(host, board, reqs, list(up_fates), list(down_fates))
    want, medium = expected_replies(reqs)
    # executed exactly once each, strictly in seq order, in the order they were submitted
    seqs = [seq for seq, _, _ in board.executed]
    assert seqs == [wire.seq_add(7, i) for i in range(len(reqs))]
    assert [t for _, t, _ in board.executed] == [m.type for m in reqs]
    assert board.medium == medium
    # answered exactly once each, with what its turn produced
    assert sorted(id(r) for r in done) == sorted(id(r) for r in submitted)
    for req, expect in zip(submitted, want):
        if expect is OutOfRangeError:
            assert isinstance(req.error, OutOfRangeError)
        else:
            assert req.error is None and req.reply.of == req.msg.type
            if isinstance(expect, bytes):
                assert req.data == expect
    assert board.session.stats["window"] == 0  # the host never sent past the board's window
    assert host.window == min(board_window, host_window)


def test_a_corrupted_frame_is_rejected_by_its_crc_and_naked():
    board = MemoryBoard()
    host = HostSession("mem", rto=0.05, rate=10**9, session=9)
    host.connect(0.0)
    for reply in board.session.feed(host.outgoing(0.0)):
        host.feed(reply.encode(), 0.0)
    assert host.state == UP
    req = host.submit(wire.Write(offset=0, data=b"x" * BLOCK), 0, 0.0)
    raw = bytearray(host.outgoing(0.0))
    assert raw[-100] == ord("x")
    raw[-100] ^= 0x01  # one data bit: only the CRC can tell
    (nak,) = board.session.feed(bytes(raw))
    assert isinstance(nak, wire.Nak) and nak.expected == req.seq and board.session.decoder.crc_errors == 1
    assert board.executed == []
    host.feed(nak.encode(), 1.0)  # past the holdoff: the NAK makes the host resend it at once
    again = host.outgoing(1.0)
    assert wire.decode_wire(again).flags & Flag.RETRANSMIT and host.stats["retransmits"] == 1
    (ack,) = board.session.feed(again)
    host.feed(ack.encode(), 1.0)
    assert req.finished and req.error is None and board.medium[:BLOCK] == b"x" * BLOCK


def handshaken(board, host, now=0.0):
    host.connect(now)
    for reply in board.session.feed(host.outgoing(now)):
        host.feed(reply.encode(), now)


def exchange(board, host, now):
    for reply in board.session.feed(host.outgoing(now)):
        host.feed(reply.encode(), now)


def test_errors_map_to_specific_exceptions():
    board = MemoryBoard()
    host = HostSession("mem", session=3)
    handshaken(board, host)
    past = host.submit(wire.Read(offset=BLOCK * BLOCKS, length=BLOCK), 0, 0.0)
    exchange(board, host, 0.0)
    assert isinstance(past.error, OutOfRangeError) and "READ seq" in str(past.error)
    assert "OUT_OF_RANGE" in str(past.error)
    nxt = host.next_seq
    (bad,) = board.session.feed(wire.frame.encode_frame(MsgType.READ, 0, nxt, bytes(5)))  # payload cut short
    assert isinstance(bad, wire.Error) and bad.code == ErrorCode.BAD_PAYLOAD and bad.seq == nxt
    req = host.submit(wire.Flush(), 0, 0.0)
    assert req.seq == nxt
    host.feed(bad.encode(), 0.0)  # the reply is of READ, the request a FLUSH: not its answer
    assert not req.finished and host.stats["duplicate_replies"] == 1
    (replay,) = board.session.feed(host.outgoing(0.0))  # the malformed READ took seq nxt: FLUSH gets its reply
    assert replay.flags & Flag.REPLAY and replay.code == ErrorCode.BAD_PAYLOAD
    host.feed(wire.Error(seq=nxt, of=MsgType.FLUSH, code=ErrorCode.BAD_PAYLOAD, message="x").encode(), 0.0)
    assert isinstance(req.error, WireProtocolError) and "BAD_PAYLOAD" in str(req.error)


def test_resend_after_a_reconnect_is_replayed_not_rerun():
    board = MemoryBoard()
    host = HostSession("mem", session=5)
    handshaken(board, host)
    req = host.submit(wire.Write(offset=0, data=b"a" * BLOCK), 0, 0.0)
    board.session.feed(host.outgoing(0.0))  # executed; its ACK is lost with the link
    host.link_lost(0.1)
    assert host.state == DOWN and host.stats["link_lost"] == 1
    handshaken(board, host, 0.2)
    assert host.state == UP and host.stats["reconnects"] == 1 and host.incarnation == 0
    (replay,) = board.session.feed(host.outgoing(0.2))
    assert replay.flags & Flag.REPLAY
    host.feed(replay.encode(), 0.2)
    assert req.error is None and [s for s, _, _ in board.executed] == [req.seq]


def test_a_board_that_lost_its_session_fails_what_it_may_have_run_and_renumbers_the_rest():
    board = MemoryBoard(window=2)
    host = HostSession("mem", window=4, session=5)
    handshaken(board, host)
    ran = host.submit(wire.Write(offset=0, data=b"a" * BLOCK), 0, 0.0)
    board.session.feed(host.outgoing(0.0))  # run, unanswered
    host.link_lost(0.1)
    board.session.session = None  # power loss
    later = host.submit(wire.Flush(), 0, 0.15)  # queued while the link was down: it never reached the line
    old_seq = later.seq
    handshaken(board, host, 0.2)
    assert isinstance(ran.error, BoardResetError) and host.incarnation == 1
    assert not later.finished and later.seq == board.session.expected != old_seq
    exchange(board, host, 0.2)
    assert later.error is None


def test_a_silent_board_is_given_up_on_in_bounded_time_with_backoff():
    host = HostSession("mem", rto=1.0, rate=10**15, retries=5, session=5)
    board = MemoryBoard()
    handshaken(board, host)
    req = host.submit(wire.Flush(), 0, 0.0)
    sends = [0.0] if host.outgoing(0.0) else []
    now = 0.0
    while host.state == UP:
        now += 0.25
        host.tick(now)
        if host.outgoing(now):
            sends.append(now)
    gaps = [b - a for a, b in zip(sends, sends[1:])]
    assert gaps == pytest.approx([backoff(k) * host.rto() for k in range(5)], abs=0.26)
    assert isinstance(req.error, DeviceGoneError) and "got no reply after 6 tries" in str(req.error)
    assert now <= host.give_up_after + 6 * 0.25  # each try's timer is seen up to one tick late
    with pytest.raises(DeviceGoneError, match="stopped answering"):
        host.submit(wire.Flush(), 0, now)  # until a new handshake, new requests fail at once


def test_handshake_retries_then_fails_with_the_hint():
    host = HostSession("mem", rto=0.1, retries=2, session=5, no_answer_hint="is the board there?")
    host.connect(0.0)
    sent = 0
    now = 0.0
    while host.state == HANDSHAKING:
        sent += bool(host.outgoing(now))
        now += 0.05
        host.tick(now)
    assert sent == 3 and host.state == DOWN
    assert isinstance(host.handshake_error, DeviceGoneError)
    assert "after 3 tries; is the board there?" in str(host.handshake_error)


def test_handshake_refuses_a_board_with_another_id():
    board = MemoryBoard()
    host = HostSession("mem", expect_board="other", session=5)
    handshaken(board, host)
    assert host.state == DOWN and isinstance(host.handshake_error, WireProtocolError)
    assert "not 'other'" in str(host.handshake_error)


class EmulatedFirmware:
    """The Python board's engine (boards/emulator) in MemoryBoard's place: the same DeviceSession, on RAM."""

    def __init__(self, window):
        from splitpoint.boards.emulator import BoardEngine
        from splitpoint.hal import open_device

        self.engine = BoardEngine(open_device(f"ram://?size={BLOCK * BLOCKS}&block={BLOCK}"), "emu", window=window,
                                  max_transfer=4096)
        self.session = self.engine.protocol
        self.executed = []
        run_medium = self.session.execute

        def execute(msg):
            self.executed.append((msg.seq, msg.type, getattr(msg, "offset", None)))
            return run_medium(msg)
        self.session.execute = execute


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.tuples(st.sampled_from(["write", "read", "flush", "trigger", "bad"]), st.integers(0, 3)),
                      min_size=1, max_size=30),
       up_fates=st.lists(FATES, max_size=20), down_fates=st.lists(REPLY_FATES, max_size=20),
       board_window=st.integers(1, 8))
def test_the_python_board_runs_the_same_session(kinds, up_fates, down_fates, board_window):
    reqs = make_requests(kinds)
    board = EmulatedFirmware(board_window)
    host = HostSession("emu", rto=0.05, rate=10**9, retries=40, session=0x77, first_seq=0xFFFFFFF0)  # wraps
    done, submitted = run(host, board, reqs, list(up_fates), list(down_fates))
    want, medium = expected_replies(reqs)
    assert [seq for seq, _, _ in board.executed] == [wire.seq_add(0xFFFFFFF0, i) for i in range(len(reqs))]
    assert board.engine.device.read(0, BLOCK * BLOCKS) == bytes(medium)
    for req, expect in zip(submitted, want):
        if expect is OutOfRangeError:
            assert isinstance(req.error, OutOfRangeError)
        else:
            assert req.error is None and (not isinstance(expect, bytes) or req.data == expect)


@settings(max_examples=150, deadline=None)
@given(kinds=st.lists(st.tuples(st.sampled_from(["write", "trigger", "read"]), st.integers(0, 3)), min_size=1,
                      max_size=30),
       up_fates=st.lists(st.one_of(FATES, st.just(("reset", 0))), max_size=30),
       down_fates=st.lists(REPLY_FATES, max_size=20))
def test_a_board_reset_never_applies_a_request_twice(kinds, up_fates, down_fates):
    """Power losses of the board: a request it may have run fails with BoardResetError (maybe applied,
    never twice); every request is answered once, and every success was executed exactly once, in order."""
    reqs = make_requests(kinds)
    board = MemoryBoard(window=4)
    host = HostSession("mem", rto=0.05, rate=10**9, retries=40, session=0x99)
    done, submitted = run(host, board, reqs, list(up_fates), list(down_fates))
    assert sorted(id(r) for r in done) == sorted(id(r) for r in submitted)
    index = {tag(m): i for i, m in enumerate(reqs) if tag(m) is not None}
    ran = [index[t] for t in board.tags if t is not None]
    assert ran == sorted(set(ran))  # never twice, and in submission order
    for i, req in enumerate(submitted):
        if tag(req.msg) is None:
            continue
        if req.error is None:
            assert i in ran
        else:
            assert isinstance(req.error, BoardResetError)


def test_a_resume_the_board_began_from_our_own_lost_info_is_a_reset():
    """After a power loss the board starts our session from INFO, but its ACK is lost; the resent INFO
    then finds the session and comes back RESUMED. The host must still see the reset: the board's
    next_seq is past everything it sent, so no request it had outstanding can be answered from there."""
    board = MemoryBoard()
    host = HostSession("mem", rto=0.1, session=5)
    handshaken(board, host)
    ran = host.submit(wire.Write(offset=0, data=b"a" * BLOCK), 0, 0.0)
    board.session.feed(host.outgoing(0.0))  # executed; the ACK is lost with the link
    host.link_lost(0.1)
    board.session.session = None  # power loss
    host.connect(0.2)
    assert board.session.feed(host.outgoing(0.2))  # the board starts the session; its ACK is lost
    host.tick(1.0)  # INFO's timer: sent again
    exchange(board, host, 1.0)
    assert host.state == UP and host.stats["false_resumes"] == 1
    assert isinstance(ran.error, BoardResetError) and host.incarnation == 1
    later = host.submit(wire.Flush(), 0, 1.0)
    exchange(board, host, 1.0)
    assert later.error is None and board.executed[-1][1] == MsgType.FLUSH


def test_a_resume_from_a_delayed_old_info_starts_a_new_session():
    """After a power loss a duplicate INFO of an earlier handshake, late on the line, restarts the
    session at an old first_seq; resuming there could run old frames still in flight as new requests,
    so the host starts a new session past every seq it sent."""
    board = MemoryBoard()
    host = HostSession("mem", rto=0.1, session=5, first_seq=1)
    host.connect(0.0)
    old_info = host.outgoing(0.0)
    exchange_bytes = board.session.feed(old_info)
    host.feed(exchange_bytes[0].encode(), 0.0)
    for i in range(2):
        host.submit(wire.Write(offset=i * BLOCK, data=b"w" * BLOCK), 0, 0.0)
    exchange(board, host, 0.0)
    ran = host.submit(wire.Write(offset=0, data=b"x" * BLOCK), 0, 0.0)
    board.session.feed(host.outgoing(0.0))  # seq 3 ran; its ACK is lost with the link
    host.link_lost(0.1)
    board.session.session = None  # power loss
    board.session.feed(old_info)  # the first INFO, late: the session restarts at seq 1
    host.connect(0.2)
    exchange(board, host, 0.2)  # RESUMED at 1, which no outstanding request allows: a new session instead
    exchange(board, host, 0.2)
    assert host.state == UP and host.stats["false_resumes"] == 1 and host.session != 5
    assert isinstance(ran.error, BoardResetError) and host.incarnation == 1
    assert wire.seq_after(board.session.expected, 4) >= wire.MAX_WINDOW  # past every seq of the old session
    later = host.submit(wire.Flush(), 0, 0.2)
    exchange(board, host, 0.2)
    assert later.error is None


def test_a_nak_resends_only_what_the_board_provably_lacks_and_not_within_the_holdoff():
    board = MemoryBoard(window=8)
    host = HostSession("mem", rto=0.2, rate=10**9, session=5)
    handshaken(board, host)
    reqs = [host.submit(wire.Flush(), 0, 0.0) for _ in range(5)]
    frames = [host.next_frame(0.0) for _ in reqs]
    for f in frames[1:3] + frames[4:]:  # the first and the fourth are lost; 2, 3 and 5 arrive
        board.session.feed(f)
    (nak,) = board.session.on_rejected_frame()  # as for a torn frame: the bitmap of what is buffered
    assert isinstance(nak, wire.Nak) and (nak.expected, nak.received) == (reqs[0].seq, 0b1011)
    host.feed(nak.encode(), 0.01)  # within a quarter rto of the sends: a NAK storm is not answered
    assert host.outgoing(0.01) == b""
    host.feed(nak.encode(), 0.1)
    resent = host.outgoing(0.1)
    assert [m.seq for m in map(wire.decode_wire, [f + b"\0" for f in resent.split(b"\0") if f])] == \
        [reqs[0].seq, reqs[3].seq]
    replies = board.session.feed(resent)
    assert [r.seq for r in replies] == [r.seq for r in reqs]
