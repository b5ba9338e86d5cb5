"""The relay's own cost, without ssh: local mux ⇄ socketpair ⇄ relay daemon ⇄ an HTTP server, all on 127.0.0.1.

What bench_resumable.py measures through ssh, minus ssh: throughput of 200 MB and p50 of 1,000 keep-alive GETs
through the two Python hops, against the same server reached directly and through two raw-byte forwarders (the
floor for two extra processes on the path). Use it to profile the mux and the relay
(``--profile`` writes cProfile stats of the mux thread). No root, no namespace.
Run: ``python bench/bench_relay_engine.py``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests" / "integration"), str(ROOT / "bench")]

from test_tunnel import SERVER, free_port  # noqa: E402

from bench_tunnel import latencies, pct, throughput  # noqa: E402
from nbcloud.ssh.resumable import LocalMux  # noqa: E402
from nbcloud.ssh.tunnel import Forward  # noqa: E402

RELAY = ROOT / "src" / "nbcloud" / "remote" / "relay" / "nbcloud_relay.py"
# The floor for comparison: a raw-byte forwarder (epoll, no protocol, nothing kept); two of them in a row are the
# same two extra processes on the path as the mux and the relay, doing the least a hop can do.
FORWARDER = r"""
import select, socket, sys
lp, tp = int(sys.argv[1]), int(sys.argv[2])
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.1", lp)); ls.listen(8)
ep = select.epoll(); ep.register(ls.fileno(), select.EPOLLIN); peer, socks = {}, {}
buf = bytearray(262144); view = memoryview(buf)  # recv(262144) would mmap/munmap a fresh buffer per read
while True:
    for fd, ev in ep.poll():
        if fd == ls.fileno():
            c, _ = ls.accept(); u = socket.create_connection(("127.0.0.1", tp))
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); socks[s.fileno()] = s
                ep.register(s.fileno(), select.EPOLLIN)
            peer[c.fileno()], peer[u.fileno()] = u, c
            continue
        n = socks[fd].recv_into(buf)
        if not n:
            ep.unregister(fd); peer[fd].close(); socks.pop(fd).close(); continue
        peer[fd].sendall(view[:n])
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", help="write the mux thread's cProfile stats here")
    ap.add_argument("--runs", type=int, default=3)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nbre-") as tmp:
        server_port, mux_port = free_port(), free_port()
        (Path(tmp) / "server.py").write_text(SERVER)
        server = subprocess.Popen([sys.executable, str(Path(tmp) / "server.py"), str(server_port)])
        (Path(tmp) / "forwarder.py").write_text(FORWARDER)
        floor_port, middle_port = free_port(), free_port()
        floor = [subprocess.Popen([sys.executable, str(Path(tmp) / "forwarder.py"), str(a), str(b)])
                 for a, b in ((middle_port, server_port), (floor_port, middle_port))]
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
        env = {**os.environ, "NBCLOUD_RELAY_DIR": tmp}
        attach = subprocess.Popen([sys.executable, str(RELAY), "attach"], stdin=theirs, stdout=theirs, env=env)
        theirs.close()
        mux = LocalMux("bench", [Forward(mux_port, server_port, "jupyter")], log=lambda m: None)
        mux.bind()
        prof = None
        if ns.profile:
            import cProfile

            prof = cProfile.Profile()
            run = mux._run

            def profiled() -> None:
                prof.enable()
                try:
                    run()
                finally:
                    prof.disable()
            mux._run = profiled  # type: ignore[method-assign]
        mux.start()
        mux.call(lambda: mux.use_transport(ours.fileno(), ours.fileno(), b""))
        deadline = time.monotonic() + 10
        while not mux.live and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        try:
            tp: dict[str, list[float]] = {"relay": [], "direct": []}
            for i in range(ns.runs):
                for who in (("relay", "direct") if i % 2 else ("direct", "relay")):
                    tp[who].append(throughput(mux_port if who == "relay" else server_port))
            t_r, t_d = statistics.median(tp["relay"]), statistics.median(tp["direct"])
            print(f"throughput 200 MB   relay {t_r:6.0f} MB/s  direct {t_d:6.0f} MB/s  ratio {t_r / t_d:.2f}")
            lat = latencies({"relay": mux_port, "direct": server_port, "floor": floor_port}, 1000, True)
            r, d, f = (pct(lat[k], 50) for k in ("relay", "direct", "floor"))
            print(f"GET keep-alive ×1000 p50 relay {r:.3f} ms direct {d:.3f} ms, two raw forwarders {f:.3f} ms: "
                  f"the relay adds {(r - d) * 1000:.0f} µs, two bare hops {(f - d) * 1000:.0f} µs")
        finally:
            mux.stop(bye_timeout=1)
            ours.close()
            attach.wait(5)
            for proc in (server, *floor):
                proc.kill()
                proc.wait()
            for p in Path(tmp).glob("relay-*.sock"):
                p.unlink()
        if prof is not None:
            prof.dump_stats(ns.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
