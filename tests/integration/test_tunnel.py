"""The self-healing tunnel against a real sshd in a network namespace, with real link cuts.

Harness: one netns + veth per test, addresses in 10.203.N.0/24 (a blackhole route for that /24 goes in first, so a
downed veth never lets traffic leak to the real network), a real ``/usr/sbin/sshd`` and a small HTTP server on
the namespace's 127.0.0.1. The bench (bench/bench_tunnel.py) reuses ``NetnsHost``. Needs root; skipped otherwise.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from nbcloud.errors import UsageError  # noqa: E402
from nbcloud.ssh import tunnel  # noqa: E402
from nbcloud.ssh.tunnel import Forward, ResolveResult  # noqa: E402

REMOTE_PORT = 8888
RESOLVER = "test_tunnel:file_resolver"

SERVER = r'''
import http.server, sys
CHUNK = b"x" * (1 << 20)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path[7:])
            self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
            view = memoryview(CHUNK)
            while n > 0:
                k = min(n, len(CHUNK)); self.wfile.write(view[:k]); n -= k
            return
        body = b'{"status": "ok", "marker": "nbtun"}'
        # Headers and body in one write, as Jupyter's tornado does: two small writes meet Nagle + delayed ACK
        # in the forwarding ssh and cost 40 ms, which would measure TCP, not the tunnel.
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
'''


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


class NetnsHost:
    """A fake instance: netns + veth + sshd + HTTP server, with a link we can cut. Everything is ours to delete."""

    def __init__(self, root: Path, name: str = "t") -> None:
        self.root, self.name, self.alias = root, name, f"nb-{name}"
        namespaces = {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}
        routes = sh("ip", "route").stdout
        free = [i for i in range(10, 250) if f"nbtun{i}" not in namespaces and f"10.203.{i}." not in routes]
        self.idx = random.choice(free)
        self.ns, self.veth, self.peer = f"nbtun{self.idx}", f"nbtun{self.idx}h", f"nbtun{self.idx}n"
        self.subnet = f"10.203.{self.idx}.0/24"
        self.host_ip, self.addr = f"10.203.{self.idx}.1", f"10.203.{self.idx}.2"
        self.sshd: subprocess.Popen[bytes] | None = None
        self.http: subprocess.Popen[bytes] | None = None
        self.created: list[str] = []
        self.cut_mode: str | None = None
        self.sshd_extra = ""  # more sshd_config lines (e.g. a SetEnv PATH without python3)
        self.ssh_config = root / "ssh_config"
        self.known_hosts = root / "known_hosts"

    def start(self) -> NetnsHost:
        # The guard first: with it, a downed veth drops traffic for the subnet instead of routing it via eth0.
        sh("ip", "route", "add", "blackhole", self.subnet)
        self.created.append("route")
        sh("ip", "netns", "add", self.ns)
        self.created.append("netns")
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        self.created.append("veth")
        sh("ip", "link", "set", self.peer, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth)
        sh("ip", "link", "set", self.veth, "up")
        sh("ip", "-n", self.ns, "addr", "add", f"{self.addr}/30", "dev", self.peer)
        sh("ip", "-n", self.ns, "link", "set", self.peer, "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")
        for key in ("hostkey", "userkey"):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nbtun-test", "-f", str(self.root / key))
        shutil.copy(self.root / "userkey.pub", self.root / "authorized_keys")
        self.pin_host_key(self.root / "hostkey.pub")
        (self.root / "server.py").write_text(SERVER)
        self.start_sshd()
        self.http = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, str(self.root / "server.py"),
                                      str(REMOTE_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.write_ssh_config()
        return self

    def pin_host_key(self, pub: Path) -> None:
        self.known_hosts.write_text(f"{self.alias} {' '.join(pub.read_text().split()[:2])}\n")

    def write_ssh_config(self, extra: str = "") -> None:
        # The shape the lead's code writes (User root instead of ubuntu: the harness logs in as root).
        text = (f"Host {self.alias}\n  HostName {self.addr}\n  User root\n  IdentityFile {self.root / 'userkey'}\n"
                f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n  HostKeyAlias {self.alias}\n"
                f"  IdentitiesOnly yes\n  ServerAliveInterval 2\n  ServerAliveCountMax 2\n{extra}")
        tmp = self.ssh_config.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.ssh_config)  # atomic, like the lead's rewrite of HostName

    def start_sshd(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        cfg = self.root / "sshd_config"
        cfg.write_text(f"ListenAddress {self.addr}\nHostKey {self.root / 'hostkey'}\n"
                       f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
                       f"UsePAM no\nStrictModes no\nPidFile none\nAllowTcpForwarding yes\n"
                       f"ClientAliveInterval 2\nClientAliveCountMax 2\nMaxStartups 100:30:200\n{self.sshd_extra}")
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
        self.sshd = subprocess.Popen(["ip", "netns", "exec", self.ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                     stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.addr, 22)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("sshd did not start")

    def session_pids(self) -> list[int]:
        if self.sshd is None:
            return []
        out = sh("pgrep", "-P", str(self.sshd.pid), check=False).stdout
        return [int(p) for p in out.split()]

    def kill_sessions(self) -> None:
        """The server drops every connection (as its ClientAlive would after a long client sleep)."""
        for pid in self.session_pids():
            os.kill(pid, signal.SIGKILL)

    def kill_sshd(self) -> None:
        """The instance stops: sshd and its sessions go away for good."""
        self.kill_sessions()
        if self.sshd is not None:
            self.sshd.kill()
            self.sshd.wait()
            self.sshd = None

    def cut(self, mode: str = "link") -> None:
        self.cut_mode = mode
        if mode == "link":
            sh("ip", "link", "set", self.veth, "down")
        else:  # silent loss, like a dead Wi-Fi: connects hang instead of failing
            table = f"inet {self.ns}"
            sh("nft", "add", "table", *table.split())
            sh("nft", "add", "chain", *table.split(), "out", "{ type filter hook output priority 0 ; }")
            sh("nft", "add", "chain", *table.split(), "in", "{ type filter hook input priority 0 ; }")
            sh("nft", "add", "rule", *table.split(), "out", "ip", "daddr", self.addr, "drop")
            sh("nft", "add", "rule", *table.split(), "in", "ip", "saddr", self.addr, "drop")

    def heal(self) -> None:
        if self.cut_mode == "link":
            sh("ip", "link", "set", self.veth, "up")  # the /30 route comes back with the link
        elif self.cut_mode == "drop":
            sh("nft", "delete", "table", "inet", self.ns, check=False)
        self.cut_mode = None

    def close(self) -> None:
        for proc in (self.http, self.sshd):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in self.session_pids():
            os.kill(pid, signal.SIGKILL)
        sh("nft", "delete", "table", "inet", self.ns, check=False)
        if "netns" in self.created:
            sh("ip", "netns", "del", self.ns, check=False)  # takes the veth pair with it
        if "veth" in self.created:
            sh("ip", "link", "del", self.veth, check=False)
        if "route" in self.created:
            sh("ip", "route", "del", "blackhole", self.subnet, check=False)


# --- the resolver the detached supervisor imports (module test_tunnel, via PYTHONPATH) -------------------------

def file_resolver(name: str) -> Callable[[], ResolveResult]:
    """Answers from $NBTUN_RESOLVER_FILE ({"state": …, "host": …}); with a host, rewrites HostName like ops does."""
    path = Path(os.environ["NBTUN_RESOLVER_FILE"])

    def resolve() -> ResolveResult:
        raw = json.loads(path.read_text()) if path.exists() else {}
        host = raw.get("host")
        cfg = raw.get("ssh_config")
        if host and cfg:
            text = Path(cfg).read_text()
            lines = [f"  HostName {host}" if ln.strip().startswith("HostName ") else ln for ln in text.splitlines()]
            tmp = Path(cfg).with_suffix(".resolver.tmp")
            tmp.write_text("\n".join(lines) + "\n")
            tmp.replace(cfg)
        return ResolveResult(raw.get("state", "running"), host)

    return resolve


def set_resolver(root: Path, **answer: object) -> None:
    (root / "resolver.json").write_text(json.dumps(answer))


# --- fixtures and helpers -----------------------------------------------------------------------------------------

@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetnsHost]:
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and /usr/sbin/sshd")
    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NBTUN_RESOLVER_FILE", str(tmp_path / "resolver.json"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    relay_dir = tempfile.mkdtemp(prefix="nbr-")  # the relay's files and socket (short path: a unix socket's limit)
    monkeypatch.setenv("NBCLOUD_REMOTE_RELAY_DIR", relay_dir)
    h = NetnsHost(tmp_path)
    try:
        h.start()
        yield h
    finally:
        try:
            tunnel.stop_supervisor(h.name, timeout=3)
        finally:
            for pid in relay_pids(h):
                os.kill(pid, signal.SIGKILL)
            h.close()
            shutil.rmtree(relay_dir, ignore_errors=True)


def relay_pids(h: NetnsHost) -> list[int]:
    """The relay processes (daemon, attach) inside this host's namespace: matched by netns inode and command."""
    try:
        ns = os.stat(f"/run/netns/{h.ns}").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == ns and b"nbcloud_relay" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(h: NetnsHost, port: int | None = None) -> int:
    fw = [Forward(port or free_port(), REMOTE_PORT, "jupyter")]
    tunnel.start_supervisor(h.name, fw, ssh_config=h.ssh_config, resolver=RESOLVER)
    return fw[0].local_port


def get(port: int, path: str = "/") -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read()
    finally:
        conn.close()


def wait_state(name: str, want: str, timeout: float = 30.0) -> tunnel.TunnelState:
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = tunnel.read_state(name)
        if st is not None and st.state == want:
            return st
        time.sleep(0.05)
    raise AssertionError(f"state {want!r} not reached; last {st}")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


# --- tests --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "resumable"])
def test_up_state_file_and_no_secrets_on_command_lines(host: NetnsHost, monkeypatch: pytest.MonkeyPatch,
                                                       mode: str) -> None:
    secret = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("JUPYTER_TOKEN", secret)  # even with a token in the environment, no command line shows it
    monkeypatch.setenv("NBCLOUD_TUNNEL_MODE", mode)
    port = start(host)
    st = tunnel.wait_until_up(host.name, timeout=30)
    assert b"nbtun" in get(port)
    assert st.local_ports == {"jupyter": port} and st.pid and st.ssh_pid and st.last_up
    raw = json.loads(tunnel.state_path(host.name).read_text())
    assert {"state", "since", "reason", "local_ports", "pid", "ssh_pid", "attempts", "last_up",
            "instance_state"} <= set(raw)
    assert tunnel.state_path(host.name).stat().st_mode & 0o077 == 0
    sup, ssh = cmdline(st.pid), cmdline(st.ssh_pid)
    assert "nbcloud.ssh.tunnel" in sup and ssh.startswith("ssh ") and st.mode == mode
    if mode == "plain":
        assert f"127.0.0.1:{port}:127.0.0.1:" in ssh
    else:  # the supervisor itself listens (on 127.0.0.1 only); ssh carries the relay's frames, no -L
        assert " -L " not in ssh and "attach" in ssh and st.held_connections == 0
        assert port in tunnel.listening_ports()  # type: ignore[operator]
    for text in (sup, ssh, tunnel.log_path(host.name).read_text(), (host.root / "home").joinpath(
            "tunnels", f"{host.name}.args.json").read_text()):
        assert secret not in text
    # Asking again with the same ports reuses the running supervisor.
    assert tunnel.start_supervisor(host.name, [Forward(port, REMOTE_PORT, "jupyter")], ssh_config=host.ssh_config,
                                   resolver=RESOLVER) == st.pid


@pytest.mark.parametrize("mode", ["link", "drop"])
def test_heals_after_link_cut(host: NetnsHost, mode: str) -> None:
    port = start(host)
    first = tunnel.wait_until_up(host.name, timeout=30)
    host.cut(mode)
    st = wait_state(host.name, "reconnecting")
    assert "link lost" in st.reason and st.since
    time.sleep(1.0)  # a few failed probes while the link is down
    host.heal()
    back = wait_state(host.name, "up")
    assert back.ssh_pid != first.ssh_pid and back.pid == first.pid
    assert b"nbtun" in get(port)  # the same local port works again


def test_instance_stopped_goes_down(host: NetnsHost) -> None:
    start(host)
    st = tunnel.wait_until_up(host.name, timeout=30)
    set_resolver(host.root, state="stopped")
    host.kill_sshd()
    down = wait_state(host.name, "down")
    assert down.reason == "instance stopped" and down.instance_state == "stopped"
    deadline = time.monotonic() + 10
    while Path(f"/proc/{st.pid}").exists() and time.monotonic() < deadline:
        tunnel.read_state(host.name)  # reaps the exited child
        time.sleep(0.05)
    assert not Path(f"/proc/{st.pid}").exists()  # the supervisor exited


def test_survives_sleep_sigstop_sigcont(host: NetnsHost) -> None:
    port = start(host)
    st = tunnel.wait_until_up(host.name, timeout=30)
    assert st.pid and st.ssh_pid
    # Laptop sleeps: supervisor and ssh freeze; meanwhile the server drops the connection.
    for pid in (st.pid, st.ssh_pid):
        os.kill(pid, signal.SIGSTOP)
    try:
        host.kill_sessions()
        time.sleep(1.0)
    finally:
        for pid in (st.ssh_pid, st.pid):
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = tunnel.read_state(host.name)
        if now is not None and now.state == "up" and now.ssh_pid != st.ssh_pid:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"did not reconnect after SIGCONT: {tunnel.read_state(host.name)}")
    assert b"nbtun" in get(port)


def test_follows_a_new_address(host: NetnsHost) -> None:
    """Stop/start gives the instance a new address: the resolver rewrites HostName and the tunnel follows."""
    port = start(host)
    tunnel.wait_until_up(host.name, timeout=30)
    host.kill_sshd()
    new = f"10.203.{host.idx}.6"
    sh("ip", "addr", "add", f"10.203.{host.idx}.5/30", "dev", host.veth)
    sh("ip", "-n", host.ns, "addr", "add", f"{new}/30", "dev", host.peer)
    host.addr = new
    host.start_sshd()
    set_resolver(host.root, state="running", host=new, ssh_config=str(host.ssh_config))
    st = wait_state(host.name, "up")
    assert st.instance_state == "running"
    assert b"nbtun" in get(port)


def test_host_key_mismatch_goes_down(host: NetnsHost) -> None:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.root / "otherkey"))
    host.pin_host_key(host.root / "otherkey.pub")
    start(host)
    st = wait_state(host.name, "down")
    assert "host key verification failed" in st.reason


def test_stop_supervisor_disconnects(host: NetnsHost) -> None:
    port = start(host)
    st = tunnel.wait_until_up(host.name, timeout=30)
    assert tunnel.stop_supervisor(host.name) is True
    down = tunnel.read_state(host.name)
    assert down is not None and down.state == "down" and down.reason == "disconnected"
    assert not Path(f"/proc/{st.ssh_pid}").exists()
    assert tunnel.port_is_free(port)


def test_busy_port_is_a_usage_error(host: NetnsHost) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"local port {busy} is in use by another program") as info:
            tunnel.start_supervisor(host.name, [Forward(busy, REMOTE_PORT, "jupyter")], ssh_config=host.ssh_config,
                                    resolver=RESOLVER)
        assert "--port" in info.value.hint
        assert not tunnel.port_is_free(busy)
        with pytest.raises(UsageError):
            tunnel.pick_local_port(busy)
        assert tunnel.pick_local_port(None, default=busy) != busy
