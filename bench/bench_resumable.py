"""Benchmark: the resumable tunnel (local mux → ssh → relay on the instance) vs a plain ``ssh -N -L``, one run.

Figures: throughput of 200 MB (goal ratio >= 0.8), p50/p99 of 1,000 keep-alive ``GET /`` (goal p50 ratio <= 1.2),
CPU of the local supervisor with one idle held connection over 30 s (goal <= 1 % of a core), RSS of the local
supervisor, its ssh and the relay daemon; and an outage: dead link detected, a new request made during a 5 s cut
answered how long after the heal. The fake instance is the netns + sshd harness of tests/integration/test_tunnel.py
(the same as bench/bench_tunnel.py); traffic goes only to 127.0.0.1 and that namespace (10.203.N.0/24 behind a
blackhole guard). Needs root. Run: ``python bench/bench_resumable.py``.
"""

from __future__ import annotations

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

from bench_tunnel import CIPHER, get_ok, latencies, pct, throughput, wait_for  # noqa: E402
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


def main() -> int:
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
        try:
            host.start()
            host.write_ssh_config(f"  Ciphers {CIPHER}\n")
            ours_port, plain_port = free_port(), free_port()
            tunnel.start_supervisor(host.name, [Forward(ours_port, REMOTE_PORT, "jupyter")],
                                    ssh_config=host.ssh_config, resolver=RESOLVER)
            plain = subprocess.Popen(["ssh", "-F", str(host.ssh_config), "-N", "-o", "BatchMode=yes",
                                      "-o", "ExitOnForwardFailure=yes",
                                      "-L", f"127.0.0.1:{plain_port}:127.0.0.1:{REMOTE_PORT}", host.alias],
                                     stderr=subprocess.DEVNULL)
            st = tunnel.wait_until_up(host.name, timeout=30)
            deadline = time.monotonic() + 10
            while not get_ok(plain_port) and time.monotonic() < deadline:
                time.sleep(0.02)
            print(f"nbcloud resumable tunnel bench — sshd in netns {host.ns}, cipher {CIPHER}")

            tp: dict[str, list[float]] = {"ours": [], "plain": []}
            for i in range(4):
                for who in (("ours", "plain") if i % 2 else ("plain", "ours")):
                    tp[who].append(throughput(ours_port if who == "ours" else plain_port))
            t_ours, t_plain = statistics.median(tp["ours"]), statistics.median(tp["plain"])
            print(f"throughput 200 MB      ours {t_ours:6.0f} MB/s  plain {t_plain:6.0f} MB/s  ratio "
                  f"{t_ours / t_plain:.2f} (goal >= 0.8)  [runs ours {', '.join(f'{x:.0f}' for x in tp['ours'])}]")
            lat = latencies({"ours": ours_port, "plain": plain_port}, 1000, True)
            o, p = lat["ours"], lat["plain"]
            print(f"GET keep-alive ×1000   p50 ours {pct(o, 50):.3f} ms plain {pct(p, 50):.3f} ms ratio "
                  f"{pct(o, 50) / pct(p, 50):.2f} (goal <= 1.2) | p99 ours {pct(o, 99):.3f} ms plain "
                  f"{pct(p, 99):.3f} ms")
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
            try:
                tunnel.stop_supervisor(host.name, timeout=3)
            finally:
                daemon = relay_daemon(host)
                if daemon:
                    os.kill(daemon, 9)
                host.close()
                shutil.rmtree(relay_dir, ignore_errors=True)
    print(f"bench runtime {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
