"""Benchmark: the resumable tunnel (local mux → ssh → relay on the instance) vs a plain ``ssh -N -L``, one run.

Figures: throughput of 200 MB (goal ratio >= 0.8), p50/p99 of 1,000 keep-alive GETs (one connection for all, as a
browser does; goal p50 ratio <= 1.2) in several rounds, the forwards interleaved request by request and the ratio
taken per round (a shared machine's load drifts: only figures of the same round compare), CPU of the local
supervisor with one idle held connection over 30 s (goal <= 1 % of a core), RSS of the local supervisor, its ssh
and the relay daemon; and an outage: dead link detected, a new request made during a 5 s cut answered how long after
the heal. The fake instance is the netns + sshd harness of tests/integration/test_tunnel.py (the same as
bench/bench_tunnel.py); traffic goes only to 127.0.0.1 and that namespace (10.203.N.0/24 behind a blackhole guard).

Options: ``--jupyter`` measures ``GET /api/status`` of a real Jupyter server in the namespace (what issue 13's
acceptance names) instead of the harness's tiny server (``GET /`` answered in ~0.1 ms: the strictest ratio);
``--floor`` adds two raw Python forwarders on the plain ssh's path (one local, one in the namespace, where the mux
and the relay sit): what two bare user-space hops cost, the floor for any design that keeps a process on each end;
``--baseline SRC`` runs a second resumable tunnel from another source tree (e.g. ``git archive main src``) in the
same rounds: before/after under the same load; ``--quick`` skips the idle-CPU and outage parts.
Needs root. Run: ``python bench/bench_resumable.py``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration"), str(ROOT / "bench")]

from test_tunnel import REMOTE_PORT, RESOLVER, NetnsHost, free_port  # noqa: E402

from bench_relay_engine import FORWARDER  # noqa: E402  (two bare user-space hops: no protocol, nothing kept)
from bench_tunnel import CIPHER, pct, throughput, wait_for  # noqa: E402
from nbcloud.ssh import tunnel  # noqa: E402
from nbcloud.ssh.tunnel import Forward  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def relay_daemon(host: NetnsHost) -> int | None:
    ns = os.stat(f"/run/netns/{host.ns}").st_ino
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit() and os.stat(entry / "ns" / "net").st_ino == ns
                    and b"nbcloud_relay.py\0daemon" in (entry / "cmdline").read_bytes()):
                return int(entry.name)
        except OSError:
            continue
    return None


def outage(host: NetnsHost, port: int) -> tuple[float, float]:
    """(seconds to notice a silent cut, seconds after the heal until a request made during the cut is answered)."""
    wait_for(host.name, "up")
    t_cut = time.monotonic()
    host.cut("drop")
    detect = wait_for(host.name, "reconnecting") - t_cut
    answered: list[float] = []
    threading.Thread(target=lambda: (get_ok_long(port), answered.append(time.monotonic())), daemon=True).start()
    time.sleep(5)
    t_heal = time.monotonic()
    host.heal()
    wait_for(host.name, "up")
    while not answered and time.monotonic() - t_heal < 60:
        time.sleep(0.005)
    return detect, (answered[0] - t_heal) if answered else float("nan")


def get_ok_long(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while s.recv(65536):
            pass


JUPYTER_PORT, TOKEN = 8890, "nbcloud-bench"  # the token is the bench's own, for a throwaway server
# A supervisor from another source tree (--baseline): started as tunnel.start_supervisor does, from that tree.
START = r"""
import sys
from pathlib import Path
from nbcloud.ssh import tunnel
from nbcloud.ssh.tunnel import Forward
print(tunnel.start_supervisor(sys.argv[1], [Forward(int(sys.argv[2]), int(sys.argv[4]), "jupyter")],
                              ssh_config=Path(sys.argv[3]), resolver="test_tunnel:file_resolver"))
"""


class Getter:
    """Keep-alive GETs of one path (with the Jupyter token when asked), timed in ms."""

    def __init__(self, path: str, headers: dict[str, str]) -> None:
        self.path, self.headers = path, headers

    def ok(self, port: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", self.path, headers=self.headers)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def latencies(self, ports: dict[str, int], n: int) -> dict[str, list[float]]:
        """n GETs through each forward on one connection each, interleaved request by request (who goes first
        alternates): drifting background load hits all alike."""
        out: dict[str, list[float]] = {who: [] for who in ports}
        conns = {who: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for who, port in ports.items()}
        order = list(ports)
        for _ in range(n):
            order.reverse()
            for who in order:
                t0 = time.perf_counter()
                conns[who].request("GET", self.path, headers=self.headers)
                resp = conns[who].getresponse()
                resp.read()
                out[who].append((time.perf_counter() - t0) * 1000)
                assert resp.status == 200, (who, resp.status)
        for conn in conns.values():
            conn.close()
        return out


def start_jupyter(host: NetnsHost, root: Path) -> subprocess.Popen[bytes]:
    home = root / "jupyter"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_DATA_DIR": str(home / "data"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    return subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, "-m", "jupyter_server", "--no-browser",
                             "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={JUPYTER_PORT}",
                             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}",
                             f"--ServerApp.root_dir={home}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=(root / "jupyter.log").open("wb"))


def stop_pid(pid: int, timeout: float = 8.0) -> None:
    """SIGTERM a supervisor we started (not our child) and wait until it is gone; its relay daemon ends after."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds of --requests GETs each (default 5)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--jupyter", action="store_true", help="GET /api/status of a real Jupyter server")
    ap.add_argument("--floor", action="store_true", help="add two raw Python forwarders on the plain ssh's path")
    ap.add_argument("--baseline", metavar="SRC", help="also a resumable tunnel from this source tree (its src/)")
    ap.add_argument("--quick", action="store_true", help="skip the idle-CPU and outage parts")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    relay_dir = tempfile.mkdtemp(prefix="nbr-")
    with tempfile.TemporaryDirectory(prefix="nbres-bench-") as tmp:
        root = Path(tmp)
        os.environ.update(NBCLOUD_HOME=str(root / "home"), NBTUN_RESOLVER_FILE=str(root / "resolver.json"),
                          NBCLOUD_TUNNEL_MODE="resumable", NBCLOUD_REMOTE_RELAY_DIR=relay_dir)
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "integration"),
                                                    os.environ.get("PYTHONPATH", "")])
        host = NetnsHost(root, "rbench")
        plain: subprocess.Popen[bytes] | None = None
        extra: list[subprocess.Popen[bytes]] = []  # jupyter, forwarders
        baseline_pid: int | None = None
        remote = JUPYTER_PORT if args.jupyter else REMOTE_PORT
        getter = Getter("/api/status", {"Authorization": f"token {TOKEN}"}) if args.jupyter else Getter("/", {})
        try:
            host.start()
            host.write_ssh_config(f"  Ciphers {CIPHER}\n")
            if args.jupyter:
                extra.append(start_jupyter(host, root))
            ports = {"ours": free_port()}
            tunnel.start_supervisor(host.name, [Forward(ports["ours"], remote, "jupyter")],
                                    ssh_config=host.ssh_config, resolver=RESOLVER)
            if args.baseline:
                ports["baseline"] = free_port()
                src = str(Path(args.baseline).resolve())
                env = {**os.environ, "NBCLOUD_HOME": str(root / "home-baseline"),
                       "PYTHONPATH": os.pathsep.join([src, str(ROOT / "tests" / "integration")])}
                baseline_pid = int(subprocess.run([sys.executable, "-c", START, host.name, str(ports["baseline"]),
                                                   str(host.ssh_config), str(remote)], env=env, cwd="/", check=True,
                                                  capture_output=True, text=True).stdout.split()[-1])
            forwards = []
            if args.floor:
                (root / "forwarder.py").write_text(FORWARDER)
                middle, ports["floor"] = free_port(), free_port()
                extra.append(subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable,
                                               str(root / "forwarder.py"), str(JUPYTER_PORT + 1), str(remote)]))
                extra.append(subprocess.Popen([sys.executable, str(root / "forwarder.py"), str(ports["floor"]),
                                               str(middle)]))
                forwards = ["-L", f"127.0.0.1:{middle}:127.0.0.1:{JUPYTER_PORT + 1}"]
            ports["plain"] = plain_port = free_port()
            ours_port = ports["ours"]
            plain = subprocess.Popen(["ssh", "-F", str(host.ssh_config), "-N", "-o", "BatchMode=yes",
                                      "-o", "ExitOnForwardFailure=yes",
                                      "-L", f"127.0.0.1:{plain_port}:127.0.0.1:{remote}", *forwards, host.alias],
                                     stderr=subprocess.DEVNULL)
            st = tunnel.wait_until_up(host.name, timeout=30)
            deadline = time.monotonic() + 60
            while not all(getter.ok(port) for port in ports.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all forwards answer: {ports}")
                time.sleep(0.05)
            print(f"nbcloud resumable tunnel bench — sshd in netns {host.ns}, cipher {CIPHER}, "
                  f"GET {getter.path} of {'a real Jupyter server' if args.jupyter else 'the harness server'}")

            if not args.jupyter:  # /bytes/N is the harness server's
                tp: dict[str, list[float]] = {"ours": [], "plain": []}
                for i in range(4):
                    for who in (("ours", "plain") if i % 2 else ("plain", "ours")):
                        tp[who].append(throughput(ours_port if who == "ours" else plain_port))
                t_ours, t_plain = statistics.median(tp["ours"]), statistics.median(tp["plain"])
                print(f"throughput 200 MB      ours {t_ours:6.0f} MB/s  plain {t_plain:6.0f} MB/s  ratio "
                      f"{t_ours / t_plain:.2f} (goal >= 0.8)  [runs ours {', '.join(f'{x:.0f}' for x in tp['ours'])}; "
                      f"plain {', '.join(f'{x:.0f}' for x in tp['plain'])}]")
            others = [who for who in ports if who != "plain"]
            ratios: dict[str, list[float]] = {who: [] for who in others}
            st = tunnel.read_state(host.name) or st
            procs = {"mux": st.pid, "mux's ssh": st.ssh_pid, "relay": relay_daemon(host), "plain ssh": plain.pid,
                     **{f"forwarder {i + 1}": p.pid for i, p in enumerate(extra[-2:]) if args.floor}}
            cpu: dict[str, float] = {}
            for r in range(args.rounds):
                before = {who: cpu_seconds(pid) for who, pid in procs.items() if pid}
                lat = getter.latencies(ports, args.requests)
                for who, c in before.items():
                    cpu[who] = cpu.get(who, 0.0) + cpu_seconds(procs[who]) - c  # type: ignore[arg-type]
                p50 = {who: pct(xs, 50) for who, xs in lat.items()}
                for who in others:
                    ratios[who].append(p50[who] / p50["plain"])
                print(f"GET keep-alive ×{args.requests} round {r + 1}: p50 " +
                      "  ".join(f"{who} {p50[who] * 1000:.0f} µs" for who in ports) + " | ratio " +
                      "  ".join(f"{who} {ratios[who][-1]:.2f}" for who in others) + " | p99 " +
                      "  ".join(f"{who} {pct(xs, 99):.2f} ms" for who, xs in lat.items()))
            print("CPU per request (µs, all rounds): " + "  ".join(
                f"{who} {c / (args.rounds * args.requests) * 1e6:.0f}" for who, c in cpu.items()))
            print(f"p50 ratio to plain ssh -L, median of {args.rounds} rounds: " +
                  "  ".join(f"{who} {statistics.median(ratios[who]):.2f}" for who in others) + " (goal <= 1.2)")
            if baseline_pid is not None:  # the rest measures ours alone (its relay daemon is then the only one)
                stop_pid(baseline_pid)
                time.sleep(2.5)
            if args.quick:
                return 0
            plain.terminate()
            plain.wait()
            plain = None

            st = tunnel.read_state(host.name) or st
            assert st.pid and st.ssh_pid
            held = socket.create_connection(("127.0.0.1", ours_port))  # one idle connection held open
            held.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            held.recv(65536)
            time.sleep(1)
            c0, t0 = cpu_seconds(st.pid), time.monotonic()
            time.sleep(30)
            idle = (cpu_seconds(st.pid) - c0) / (time.monotonic() - t0) * 100
            daemon = relay_daemon(host)
            print(f"idle, 1 held connection, 30 s: local supervisor CPU {idle:.2f} % of a core (goal <= 1 %)")
            print(f"RSS: local supervisor {rss_mb(st.pid):.1f} MB, its ssh {rss_mb(st.ssh_pid):.1f} MB, relay daemon "
                  f"on the instance {rss_mb(daemon) if daemon else float('nan'):.1f} MB")
            held.close()
            detect, after = outage(host, ours_port)
            print(f"outage (silent drop, 5 s): noticed in {detect:.2f} s; a request made during it answered "
                  f"{after:.2f} s after the heal")
        finally:
            if plain is not None:
                plain.kill()
                plain.wait()
            for proc in extra:
                proc.terminate()
                proc.wait()
            if baseline_pid is not None:
                stop_pid(baseline_pid)
            try:
                tunnel.stop_supervisor(host.name, timeout=3)
            finally:
                time.sleep(2.5 if baseline_pid else 0)  # a baseline's daemon ends 2 s after its session
                while (daemon := relay_daemon(host)) is not None:
                    os.kill(daemon, 9)
                    time.sleep(0.05)
                host.close()
                shutil.rmtree(relay_dir, ignore_errors=True)
    print(f"bench runtime {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
