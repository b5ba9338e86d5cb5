"""Benchmark: nbcloud's self-healing tunnel vs a plain ``ssh -N -L`` to the same sshd, same cipher, one run.

Figures: throughput of 200 MB through the forward, p50/p99 latency of 1,000 GETs (keep-alive) and 200 GETs on new
connections, dead-link detection time ÷ keepalive budget (2 s × 2), re-attach time after the link heals (veth down/up
and silent nft drop). The fake instance is the netns + sshd harness of tests/integration/test_tunnel.py; traffic goes
only to 127.0.0.1 and that namespace (10.203.N.0/24 behind a blackhole guard). Needs root. Run:
``python bench/bench_tunnel.py``.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration")]

from test_tunnel import REMOTE_PORT, RESOLVER, NetnsHost, free_port  # noqa: E402

from nbcloud.ssh import tunnel  # noqa: E402
from nbcloud.ssh.tunnel import Forward  # noqa: E402

CIPHER = "chacha20-poly1305@openssh.com"  # OpenSSH's first choice; both sides of the comparison use it
SIZE = 200 * 1024 * 1024
KEEPALIVE = (2, 2)


def throughput(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    t0 = time.perf_counter()
    conn.request("GET", f"/bytes/{SIZE}")
    resp = conn.getresponse()
    got = 0
    while chunk := resp.read(1 << 20):
        got += len(chunk)
    dt = time.perf_counter() - t0
    conn.close()
    assert got == SIZE, got
    return SIZE / dt / 1e6


def latencies(ports: dict[str, int], n: int, keepalive: bool) -> dict[str, list[float]]:
    """n GETs through each forward, interleaved request by request so drifting background load hits both alike."""
    out: dict[str, list[float]] = {who: [] for who in ports}
    conns = {who: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for who, port in ports.items()}
    order = list(ports.items())
    for _ in range(n):
        order.reverse()  # who goes first alternates: the first of a pair meets colder caches
        for who, port in order:
            if not keepalive:
                conns[who] = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            t0 = time.perf_counter()
            conns[who].request("GET", "/")
            conns[who].getresponse().read()
            out[who].append((time.perf_counter() - t0) * 1000)
            if not keepalive:
                conns[who].close()
    for conn in conns.values():
        conn.close()
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def wait_for(name: str, want: str, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = tunnel.read_state(name)
        if st is not None and st.state == want:
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"{want} not reached: {tunnel.read_state(name)}")


def get_ok(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbtun-bench-") as tmp:
        root = Path(tmp)
        os.environ["NBCLOUD_HOME"] = str(root / "home")
        os.environ["NBTUN_RESOLVER_FILE"] = str(root / "resolver.json")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "integration"),
                                                    os.environ.get("PYTHONPATH", "")])
        host = NetnsHost(root, "bench")
        plain: subprocess.Popen[bytes] | None = None
        try:
            host.start()
            host.write_ssh_config(f"  Ciphers {CIPHER}\n")
            ours_port, plain_port = free_port(), free_port()
            tunnel.start_supervisor(host.name, [Forward(ours_port, REMOTE_PORT, "jupyter")],
                                    ssh_config=host.ssh_config, resolver=RESOLVER,
                                    keepalive_interval=KEEPALIVE[0], keepalive_count=KEEPALIVE[1])
            plain = subprocess.Popen(["ssh", "-F", str(host.ssh_config), "-N", "-o", "BatchMode=yes",
                                      "-o", "ExitOnForwardFailure=yes",
                                      "-L", f"127.0.0.1:{plain_port}:127.0.0.1:{REMOTE_PORT}", host.alias],
                                     stderr=subprocess.DEVNULL)
            tunnel.wait_until_up(host.name, timeout=30)
            deadline = time.monotonic() + 10
            while not get_ok(plain_port) and time.monotonic() < deadline:
                time.sleep(0.02)
            print(f"nbcloud tunnel bench — sshd in netns {host.ns}, cipher {CIPHER}, keepalive "
                  f"{KEEPALIVE[0]} s × {KEEPALIVE[1]}")

            # Alternate ours/plain so background load on this shared box hits both alike; report medians.
            tp: dict[str, list[float]] = {"ours": [], "plain": []}
            for i in range(4):
                for who in (("ours", "plain") if i % 2 else ("plain", "ours")):
                    tp[who].append(throughput(ours_port if who == "ours" else plain_port))
            t_ours, t_plain = statistics.median(tp["ours"]), statistics.median(tp["plain"])
            print(f"throughput 200 MB     ours {t_ours:7.0f} MB/s   plain {t_plain:7.0f} MB/s   "
                  f"ratio {t_ours / t_plain:.2f}  (goal >= 1.0)")

            for keepalive, n in ((True, 1000), (False, 200)):
                lat = latencies({"ours": ours_port, "plain": plain_port}, n, keepalive)
                o, p = lat["ours"], lat["plain"]
                label = "GET keep-alive ×1000" if keepalive else "GET new conn ×200  "
                print(f"{label}  p50 ours {pct(o, 50):.3f} ms plain {pct(p, 50):.3f} ms ratio "
                      f"{pct(o, 50) / pct(p, 50):.2f} (goal <= 1.1) | p99 ours {pct(o, 99):.3f} ms plain "
                      f"{pct(p, 99):.3f} ms ratio {pct(o, 99) / pct(p, 99):.2f}")
            plain.terminate()
            plain.wait()
            plain = None

            budget = KEEPALIVE[0] * KEEPALIVE[1]
            for mode in ("link", "drop"):
                detect, reattach, first_get = [], [], []
                for _ in range(2 if mode == "link" else 1):
                    wait_for(host.name, "up")
                    time.sleep(0.3)
                    t_cut = time.monotonic()
                    host.cut(mode)
                    detect.append(wait_for(host.name, "reconnecting") - t_cut)
                    time.sleep(1.5)  # down for a while: the supervisor is in its steady probing state
                    t_heal = time.monotonic()
                    host.heal()
                    reattach.append(wait_for(host.name, "up") - t_heal)
                    while not get_ok(ours_port):
                        time.sleep(0.005)
                    first_get.append(time.monotonic() - t_heal)
                det = ", ".join(f"{d:.2f}" for d in detect)
                print(f"dead link ({mode:4}) detected in {det} s; ÷ budget {budget} s = "
                      f"{max(detect) / budget:.2f} worst (goal <= 1.5)")
                print(f"re-attach ({mode:4}) after heal: state up {', '.join(f'{r:.2f}' for r in reattach)} s, "
                      f"first GET ok {', '.join(f'{r:.2f}' for r in first_get)} s (goal <= 1.0)")
        finally:
            if plain is not None:
                plain.kill()
                plain.wait()
            try:
                tunnel.stop_supervisor(host.name, timeout=3)
            finally:
                host.close()
    print(f"bench runtime {time.monotonic() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
