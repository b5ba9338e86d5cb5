"""The resumable tunnel against a real sshd in a network namespace, with real link cuts (issue 13).

Same harness as test_tunnel.py (``NetnsHost``: netns + veth behind a blackhole guard, a real sshd, a small HTTP
server), plus a "ticker" in the namespace: a TCP server that writes a numbered line every 0.2 s on each
connection and echoes what it receives, so a test can tell whether a byte was lost or doubled across a cut.
The relay runs on the namespace's side exactly as on an instance (uploaded over the ssh session, its daemon on a
unix socket in a private folder). Needs root; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from test_tunnel import REMOTE_PORT, RESOLVER, NetnsHost, relay_pids, wait_state  # noqa: E402

from nbcloud.ssh import tunnel  # noqa: E402
from nbcloud.ssh.tunnel import Forward  # noqa: E402

TICKER_PORT = 8890
TICKER = r'''
import socket, sys, threading, time
def serve(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def echo():
        buf = b""
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                conn.sendall(b"echo:" + line + b"\n")
    threading.Thread(target=echo, daemon=True).start()
    i = 0
    try:
        while True:
            conn.sendall(b"%d\n" % i)
            i += 1
            time.sleep(0.2)
    except OSError:
        pass
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(16)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
'''


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetnsHost]:
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and /usr/sbin/sshd")
    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NBTUN_RESOLVER_FILE", str(tmp_path / "resolver.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("NBCLOUD_TUNNEL_MODE", "resumable")
    relay_dir = tempfile.mkdtemp(prefix="nbr-")  # short: a unix socket path has ~100 characters
    monkeypatch.setenv("NBCLOUD_REMOTE_RELAY_DIR", relay_dir)
    h = NetnsHost(tmp_path)
    ticker: subprocess.Popen[bytes] | None = None
    try:
        h.start()
        (tmp_path / "ticker.py").write_text(TICKER)
        ticker = subprocess.Popen(["ip", "netns", "exec", h.ns, sys.executable, str(tmp_path / "ticker.py"),
                                   str(TICKER_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        yield h
    finally:
        try:
            tunnel.stop_supervisor(h.name, timeout=3)
        finally:
            for pid in relay_pids(h):
                os.kill(pid, 9)
            if ticker is not None:
                ticker.kill()
                ticker.wait()
            h.close()
            shutil.rmtree(relay_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(h: NetnsHost) -> tuple[int, int]:
    fw = [Forward(free_port(), REMOTE_PORT, "jupyter"), Forward(free_port(), TICKER_PORT, "port-8890")]
    tunnel.start_supervisor(h.name, fw, ssh_config=h.ssh_config, resolver=RESOLVER)
    tunnel.wait_until_up(h.name, timeout=30)
    return fw[0].local_port, fw[1].local_port


class Ticker:
    """A client of the ticker through the local port: collects the numbered lines and the echoes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=120)
        self.lines: list[bytes] = []
        self.closed_at: float | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed_at = time.monotonic()
                return
            buf += data
            *done, buf = buf.split(b"\n")
            self.lines += done

    def numbers(self) -> list[int]:
        return [int(x) for x in self.lines if x.isdigit()]

    def wait_for(self, n: int, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while len(self.numbers()) < n and self.closed_at is None and time.monotonic() < end:
            time.sleep(0.05)
        assert len(self.numbers()) >= n, f"only {len(self.numbers())} lines; closed={self.closed_at}"


def http_get(port: int, timeout: float = 120) -> tuple[float, bytes]:
    """(seconds until the whole answer came, the answer) for a raw GET / through the local port."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            reply += data
    return time.monotonic() - t0, reply


@pytest.mark.parametrize("mode", ["drop", "link"])
def test_a_connection_outlives_a_cut_and_new_requests_wait(host: NetnsHost, mode: str) -> None:
    http_port, tick_port = start(host)
    first = tunnel.read_state(host.name)
    t = Ticker(tick_port)
    t.wait_for(5)
    host.cut(mode)
    st = wait_state(host.name, "reconnecting")
    assert st.held_connections >= 1 and "link lost" in st.reason
    with socket.create_connection(("127.0.0.1", http_port), timeout=5):
        pass  # the local port stays bound and accepts through the outage
    waited: list[tuple[float, bytes]] = []
    asked = time.monotonic()
    getter = threading.Thread(target=lambda: waited.append(http_get(http_port)))
    getter.start()
    t.sock.sendall(b"during-the-cut\n")  # upstream bytes written during the outage arrive after it
    cut_s = 12.0
    time.sleep(max(0.0, cut_s - (time.monotonic() - asked)))
    healed = time.monotonic()
    host.heal()
    back = wait_state(host.name, "up", timeout=60)
    getter.join(60)
    assert waited and waited[0][1].startswith(b"HTTP/1.1 200") and b"nbtun" in waited[0][1]
    print(f"\n[{mode}] new request waited {waited[0][0]:.2f} s (answered {asked + waited[0][0] - healed:.2f} s "
          f"after the heal); up again {back.since}")
    seen = len(t.numbers())
    t.wait_for(seen + 10)
    nums = t.numbers()
    assert nums == list(range(len(nums))), "every line once, in order, none lost"
    assert t.lines.count(b"echo:during-the-cut") == 1 and t.closed_at is None
    assert back.pid == first.pid and back.last_outage and back.last_outage["resumed"] is True  # type: ignore[union-attr]
    assert "carried through" in back.reason
    t.sock.close()


def test_new_request_gets_504_past_the_hold_limit(host: NetnsHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCLOUD_HOLD_NEW", "2")
    http_port, _ = start(host)
    host.cut("drop")
    wait_state(host.name, "reconnecting")
    took, reply = http_get(http_port)
    assert reply.startswith(b"HTTP/1.1 504 Gateway Timeout") and b"link to t is down" in reply
    assert 1.5 < took < 10
    host.heal()
    wait_state(host.name, "up", timeout=60)
    assert http_get(http_port)[1].startswith(b"HTTP/1.1 200")


def test_past_the_resume_window_streams_close_and_new_ones_work(host: NetnsHost,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBCLOUD_RESUME_WINDOW", "4")
    http_port, tick_port = start(host)
    t = Ticker(tick_port)
    t.wait_for(3)
    host.cut("drop")
    wait_state(host.name, "reconnecting")
    end = time.monotonic() + 30
    while t.closed_at is None and time.monotonic() < end:
        time.sleep(0.1)
    assert t.closed_at is not None, "the held connection is closed once the window passed"
    st = tunnel.read_state(host.name)
    assert st is not None and st.held_connections == 0 and st.last_outage and st.last_outage["closed"] == 1
    host.heal()
    back = wait_state(host.name, "up", timeout=60)
    assert http_get(http_port)[1].startswith(b"HTTP/1.1 200")
    assert back.last_outage and back.last_outage["resumed"] is False and "resume window passed" in back.reason
    nums = t.numbers()
    assert nums == list(range(len(nums)))


def test_disconnect_leaves_no_process_on_either_side(host: NetnsHost) -> None:
    http_port, tick_port = start(host)
    t = Ticker(tick_port)
    t.wait_for(3)
    assert http_get(http_port)[1].startswith(b"HTTP/1.1 200")
    st = tunnel.read_state(host.name)
    assert st is not None and st.pid and st.ssh_pid and relay_pids(host)
    tunnel.stop_supervisor(host.name)
    end = time.monotonic() + 10
    while (relay_pids(host) or host.session_pids()) and time.monotonic() < end:
        time.sleep(0.1)
    assert relay_pids(host) == [] and host.session_pids() == []
    for pid in (st.pid, st.ssh_pid):
        assert not Path(f"/proc/{pid}").exists() or ") Z" in Path(f"/proc/{pid}/stat").read_text()
    assert tunnel.port_is_free(http_port) and tunnel.port_is_free(tick_port)
    t.thread.join(5)
    assert t.closed_at is not None


def test_two_laptops_share_the_relay_without_taking_turns(host: NetnsHost) -> None:
    """Two tunnels (two laptops, or two NBCLOUD_HOMEs) to one instance: one relay daemon, two sessions side by
    side; neither attach pushes the other off."""
    _, tick_a = start(host)
    tick_b = free_port()
    tunnel.start_supervisor("t2", [Forward(tick_b, TICKER_PORT, "port-8890")], host_alias=host.alias,
                            ssh_config=host.ssh_config, resolver=RESOLVER)
    try:
        tunnel.wait_until_up("t2", timeout=30)
        a, b = Ticker(tick_a), Ticker(tick_b)
        first = (tunnel.read_state(host.name), tunnel.read_state("t2"))
        time.sleep(4)
        a.wait_for(15)
        b.wait_for(15)
        for before, name in zip(first, (host.name, "t2"), strict=True):
            now = tunnel.read_state(name)
            assert now is not None and before is not None
            assert now.state == "up" and now.since == before.since and now.ssh_pid == before.ssh_pid
        assert len([p for p in relay_pids(host) if b"daemon" in Path(f"/proc/{p}/cmdline").read_bytes()]) == 1
    finally:
        tunnel.stop_supervisor("t2", timeout=3)


def test_an_instance_without_python3_gets_a_plain_tunnel_that_says_so(host: NetnsHost) -> None:
    """No python3 on the instance's PATH: the relay cannot run, so the supervisor falls back to plain ssh -L by
    itself (no retry loop), records why, and the port works."""
    assert host.sshd is not None
    host.sshd.kill()
    host.sshd.wait()
    bin_dir = host.root / "bin"  # everything of /usr/bin but python: the login shell's rc files still run
    bin_dir.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith("python"):
            (bin_dir / tool.name).symlink_to(tool)
    # and a HOME of its own: root's rc files here put pyenv's python3 on the PATH
    (host.root / "emptyhome").mkdir()
    host.sshd_extra = f"SetEnv PATH={bin_dir} HOME={host.root / 'emptyhome'}\n"
    host.start_sshd()
    port = free_port()
    tunnel.start_supervisor(host.name, [Forward(port, REMOTE_PORT, "jupyter")], ssh_config=host.ssh_config,
                            resolver=RESOLVER)
    st = tunnel.wait_until_up(host.name, timeout=30)
    assert st.mode == "plain" and st.fallback == "the instance has no python3, which the relay needs"
    assert b'"marker": "nbtun"' in http_get(port, timeout=10)[1]
    assert not relay_pids(host)
    # A later connect asking for the resumable mode keeps this supervisor (no restart, no second fallback).
    again = tunnel.start_supervisor(host.name, [Forward(port, REMOTE_PORT, "jupyter")], ssh_config=host.ssh_config,
                                    resolver=RESOLVER)
    assert again == st.pid
    log = tunnel.log_path(host.name).read_text()
    assert log.count("falling back to a plain tunnel") == 1
