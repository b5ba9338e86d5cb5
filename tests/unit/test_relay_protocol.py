"""The resumable tunnel's protocol, without a network: frames, ack/resend bookkeeping, resume, window expiry."""

from __future__ import annotations

import socket
import time

import pytest

from nbcloud.errors import UsageError
from nbcloud.ops.tunnels import forwards_of, parse_forward
from nbcloud.remote.relay.nbcloud_relay_protocol import (
    ACK,
    DATA,
    HELLO,
    PING,
    Parser,
    ProtocolError,
    Stream,
    frame,
    hello,
)
from nbcloud.ssh.resumable import LocalMux, outage_seconds, relay_command, relay_preamble, timeout_page
from nbcloud.ssh.tunnel import Forward, TunnelState, tunnel_options_from_env


def test_frames_parse_back_whatever_the_split() -> None:
    wire = frame(DATA, 7, 1 << 40, b"abc" * 1000) + hello({"session": "s"}) + frame(ACK, 7, 3000) + frame(PING)
    want = [(DATA, 7, 1 << 40, b"abc" * 1000), (HELLO, 0, 0, b'{"session": "s"}'), (ACK, 7, 3000, b""),
            (PING, 0, 0, b"")]
    for step in (1, 2, 7, 13, 4096, len(wire)):
        p = Parser()
        got: list = []
        for i in range(0, len(wire), step):
            for kind, sid, value, payload in p.feed(wire[i:i + step]):
                # A DATA frame may come in pieces (each the part one read held); each piece carries its own offset.
                last = got[-1] if got else None
                if kind == DATA and last and last[0] == DATA and last[1] == sid and last[2] + len(last[3]) == value:
                    got[-1] = (DATA, sid, last[2], last[3] + bytes(payload))
                else:
                    got.append((kind, sid, value, bytes(payload)))
        assert got == want and not p.buf and not p.remaining
        if step >= 4096:
            assert len(got) == len(p.feed(wire)) == 4  # whole reads: whole frames


def test_garbage_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Parser().feed(b"\xff" * 64)
    with pytest.raises(ProtocolError):
        Parser().feed(frame(DATA)[:1] + b"\0\0\0\1" + b"\0" * 8 + b"\x7f\xff\xff\xff")  # absurd length


def drain(s: Stream, limit: int = 100) -> tuple[int, bytes]:
    """Everything ``take`` hands out now (it gives one kept chunk at a time): (first offset, the bytes joined)."""
    pieces = []
    while (piece := s.take(limit)) is not None:
        assert not pieces or piece[0] == pieces[-1][0] + len(pieces[-1][1])  # contiguous offsets
        pieces.append(piece)
    return (pieces[0][0] if pieces else -1), b"".join(bytes(p[1]) for p in pieces)


def test_unacked_bytes_are_kept_and_resent_from_the_peers_offset() -> None:
    s = Stream(1)
    s.push(b"0123456789")
    assert s.take(4) == (0, b"0123") and s.take(100) == (4, b"456789") and s.take(1) is None
    s.on_ack(3)
    assert s.acked == 3 and bytes(s.unacked) == b"3456789"
    s.push(b"AB")
    # The link died after the peer received 6 bytes (its ack for them never came): resume sends from 6 on.
    s.rewind(6)
    assert drain(s) == (6, b"6789AB") and s.acked == 6
    s.rewind(6)  # a second cut before any ack: the same bytes again, nothing skipped
    assert drain(s, 3) == (6, b"6789AB")
    s.rewind(6)
    s.on_ack(8)  # an ack between a rewind and the resend reaches into what was not sent again yet
    assert drain(s) == (8, b"89AB") and s.unacked_bytes() == 4
    s.on_ack(12)
    assert not s.unacked and s.take(1) is None and s.unacked_bytes() == 0


def test_small_pieces_waiting_together_leave_as_one_frame_big_ones_as_they_came() -> None:
    s = Stream(1)
    for i in range(300):  # e.g. websocket messages read while the link was down
        s.push(b"msg %03d\n" % i)
    big = b"x" * 100_000
    s.push(big)
    first = s.take(1 << 20)
    assert first is not None and first[0] == 0 and bytes(first[1]) == b"".join(b"msg %03d\n" % i for i in range(300))
    assert s.take(1 << 20) == (2400, big) and s.take(1) is None
    s.rewind(0)  # resent from the start: the same bytes at the same offsets
    assert drain(s, 1 << 20) == (0, bytes(first[1]) + big)


def test_received_data_is_deduplicated_and_gaps_refused() -> None:
    r = Stream(1)
    assert r.on_data(0, b"hello") == b"hello"
    assert r.on_data(0, b"hello world") == b" world"  # a resend overlapping what we had
    assert r.on_data(3, b"lo") == b""
    assert r.recv == 11
    with pytest.raises(ProtocolError):
        r.on_data(20, b"x")


def test_fin_takes_one_offset_and_both_sides_finish() -> None:
    a, b = Stream(1), Stream(1)
    a.push(b"req")
    a.eof()
    seq, data = a.take(10) or (0, b"")
    assert b.on_data(seq, data) == b"req" and a.want_fin()
    assert not b.on_fin(2) and b.on_fin(3) and not b.on_fin(3)  # only at the right offset, once
    b.delivered = 4  # b wrote the 3 bytes and shut its socket
    a.on_ack(4)
    assert a.peer_acked > a.fin_out  # type: ignore[operator]
    assert not a.done()  # a still waits for b's side
    b.eof()
    assert a.on_fin(0)
    a.delivered = 1
    b.on_ack(1)
    assert a.done() and b.fin_out == 0 and b.peer_acked == 1


def test_outage_counts_the_sleep_the_monotonic_clock_misses() -> None:
    assert outage_seconds(100.0, 1000.0, 110.0, 1010.0) == 10.0
    assert outage_seconds(100.0, 1000.0, 101.0, 4600.0) == 3600.0  # a laptop asleep for an hour
    assert outage_seconds(100.0, 1000.0, 105.0, 900.0) == 5.0  # the wall clock set back


def test_timeout_page_and_relay_command_name_no_secret() -> None:
    page = timeout_page("demo", 60.2)
    head, body = page.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504 ") and b"Content-Length: %d" % len(body) in head
    assert b"link to demo is down" in body and b"nbcloud status demo" in body
    cmd = relay_command()
    assert cmd.startswith("python3 -c ") and "attach" in cmd and "token" not in cmd.lower()
    pre = relay_preamble([("a.py", b"print(1)\n"), ("b.py", b"")])
    assert pre == b"02" + b"04a.py0000000009print(1)\n" + b"04b.py0000000000"


def test_forward_specs_and_options() -> None:
    assert parse_forward("6006") == (None, 6006) and parse_forward("16006:6006") == (16006, 6006)
    for bad in ("", "x", "1:2:3", "0", "70000", "a:80"):
        with pytest.raises(UsageError):
            parse_forward(bad)
    assert forwards_of({"jupyter": 8888, "port-6006": 6007, "gateway": 9888}, {"jupyter": 8888, "port-6006": 6006,
                                                                             "gateway": 8889}) == [
        {"remote_port": 6006, "local_port": 6007}]
    assert tunnel_options_from_env({}) == {"mode": "resumable", "resume_window": 600.0, "hold_new": 60.0}
    assert tunnel_options_from_env({"NBCLOUD_TUNNEL_MODE": "plain", "NBCLOUD_RESUME_WINDOW": "30"})["mode"] == "plain"
    for env in ({"NBCLOUD_TUNNEL_MODE": "magic"}, {"NBCLOUD_RESUME_WINDOW": "soon"}, {"NBCLOUD_HOLD_NEW": "-1"}):
        with pytest.raises(UsageError):
            tunnel_options_from_env(env)
    assert TunnelState.from_dict({"name": "x", "state": "up", "since": "", "reason": "", "held_connections": 2,
                                  "future_field": 1}).held_connections == 2


def _mux_with_stream(window: float = 600.0, hold_new: float = 60.0) -> tuple[LocalMux, socket.socket, Stream]:
    mux = LocalMux("demo", [Forward(1, 8888, "jupyter")], window=window, hold_new=hold_new, log=lambda m: None)
    ours, theirs = socket.socketpair()
    st = Stream(1, ours)
    mux.targets[1], mux.created[1] = mux.forwards[0], time.monotonic()
    mux.add_stream(st)
    return mux, theirs, st


def test_a_new_connection_waits_then_gets_the_504_page() -> None:
    mux, browser, _ = _mux_with_stream(hold_new=5)
    browser.sendall(b"GET /api/status HTTP/1.1\r\n\r\n")
    mux.tick()
    assert 1 in mux.streams  # within the limit: held
    mux.created[1] -= 6
    mux.tick()
    assert not mux.streams
    browser.settimeout(2)
    reply = b"".join(iter(lambda: browser.recv(4096), b""))
    assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout") and b"link to demo is down" in reply


def test_past_the_resume_window_held_streams_close_and_the_session_is_replaced() -> None:
    mux, browser, _st = _mux_with_stream(window=30)
    mux.opened.add(1)  # it reached the relay before the link died
    mux.down_mono = None  # it was up
    mux.transport_lost("test")
    first = mux.session
    mux.down_mono -= 10  # type: ignore[operator]
    mux.down_wall -= 10
    mux.tick()
    assert 1 in mux.streams
    mux.down_wall -= 3600  # asleep for an hour: the monotonic clock did not see it
    mux.tick()
    assert not mux.streams and mux.replaces == first and mux.session != first
    assert mux.outage is not None and mux.outage.closed == 1
    browser.settimeout(2)
    assert browser.recv(10) == b""  # closed cleanly (EOF), not reset


def test_hello_resumes_known_streams_and_reopens_fresh_ones() -> None:
    mux, _browser, st = _mux_with_stream()
    sent: list[bytes] = []
    mux.send = sent.append  # type: ignore[method-assign]
    st.push(b"GET / HTTP/1.1\r\n\r\n")
    mux.transport_lost("test")
    mux.outage = None
    mux.on_frame(HELLO, 0, 0, b'{"resumed": true, "streams": {}}')
    assert any(b[:1] == bytes([2]) for b in sent)  # OPEN for the stream the relay never saw
    assert mux.live and 1 in mux.opened
    # A stream that already exchanged bytes but that the relay no longer has is closed, not re-opened.
    st.on_data(0, b"HTTP/1.1 200")
    mux.transport_lost("test")
    mux.on_frame(HELLO, 0, 0, b'{"resumed": false, "streams": {}}')
    assert not mux.streams


def test_status_line_names_forwards_held_connections_and_the_last_outage() -> None:
    from types import SimpleNamespace

    from nbcloud.cli.status_text import tunnel_line

    quiet = SimpleNamespace(name="a", forwards=[], held_connections=0, last_outage=None)
    assert tunnel_line(quiet) == ""
    busy = SimpleNamespace(name="a", forwards=[{"remote_port": 6006, "local_port": 6007}], held_connections=2,
                           last_outage={"started": "2026-11-30T18:00:00Z", "seconds": 61.2, "held": 2, "closed": 0,
                                        "timed_out": 0, "resumed": True})
    line = tunnel_line(busy)
    assert "forward 127.0.0.1:6007 → 6006" in line and "2 connection(s) held" in line
    assert "61 s: 2 connection(s) carried through" in line
    expired = SimpleNamespace(name="a", forwards=[], held_connections=0,
                              last_outage={"started": "x", "seconds": 900, "held": 1, "closed": 1, "resumed": False})
    assert "1 connection(s) closed (past the resume window)" in tunnel_line(expired)


def test_a_second_stop_leaves_nothing_waiting_on_the_ended_mux_thread() -> None:
    """The supervisor stops its mux twice (in the attempt, then on the way out). The second stop queued its BYE for
    a thread that had ended and waited out the call's 5 s: `disconnect` took 5 s and then SIGKILLed the supervisor
    before it wrote its own state. Nothing may be queued where no thread will ever take it."""
    mux = LocalMux("demo", [Forward(1, 8888, "jupyter")], log=lambda m: None)
    mux.start()
    mux.stop()
    assert mux.thread is not None and not mux.thread.is_alive()
    mux.stop()
    ran: list[int] = []
    mux.call(lambda: ran.append(1))
    assert mux._calls == [] and ran == []
