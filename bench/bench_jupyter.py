"""`up` to Jupyter answering on the sandbox vs a bare `jupyter server` start, and the bootstrap's second run.

Prints, in one run:
  * a bare `jupyter server` (and, for reference, `jupyter lab`) from a venv built from the sandbox wheelhouse with the
    instance's packages, started on 127.0.0.1 of this host, until /api/status answers 200 (median of N; the venv is
    made once, outside the timing)
  * `nbcloud up` (library call, `wait_jupyter=True`) until Jupyter answers on the instance, with its phases
  * the ratio up / bare server (goal ≤ 2.0)
  * the bootstrap's second run on the same instance (`ssh nb-NAME sudo bash /opt/nbcloud/bootstrap.sh`)

Run as root: python bench/bench_jupyter.py [--runs 3] [--subnet 10.211.0.0/16]
Sandbox subnet 10.211.0.0/16 (--subnet), a temporary NBCLOUD_HOME / NBCLOUD_SANDBOX_DIR; resets the sandbox.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_venv(tmp: Path) -> Path:
    from nbcloud.remote.packages import JUPYTER
    from nbcloud.sandbox.wheelhouse import INSTANCE_PYTHON, ensure_wheelhouse

    wheelhouse = ensure_wheelhouse(print)
    venv = tmp / "venv"
    uv = shutil.which("uv") or "uv"
    subprocess.run([uv, "venv", "-q", str(venv), "-p", INSTANCE_PYTHON], check=True)
    subprocess.run([uv, "pip", "install", "-q", "-p", str(venv), "--no-index", "--find-links", str(wheelhouse),
                    *JUPYTER], check=True)
    return venv


def bare_start(venv: Path, tmp: Path, command: str) -> float:
    """Seconds from exec to /api/status 200 for `jupyter <command>` on 127.0.0.1 (token by env, as on instances)."""
    port, token = _free_port(), "bench-token"
    home = tmp / f"home-{command}-{port}"
    home.mkdir()
    env = dict(os.environ) | {"HOME": str(home), "JUPYTER_TOKEN": token, "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
                              "JUPYTER_DATA_DIR": str(home / ".local/share/jupyter"),
                              "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    argv = [str(venv / "bin" / f"jupyter-{command}"), "--ip=127.0.0.1", f"--port={port}", "--no-browser",
            f"--ServerApp.root_dir={home}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        argv.append("--allow-root")  # the bench runs as root (the sandbox needs it); instances run as ubuntu
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": f"token {token}"})
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - t0
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter {command} exited with {proc.returncode}")
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"jupyter {command} did not answer in 120 s")
            time.sleep(0.02)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3, help="bare starts to take the median of")
    parser.add_argument("--subnet", default="10.211.0.0/16", help="the sandbox's subnet (one not held by another)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="nbbench-jupyter-"))
    os.environ["NBCLOUD_HOME"] = str(tmp / "home")
    os.environ["NBCLOUD_USER_SSH_CONFIG"] = str(tmp / "ssh_config")
    os.environ["NBCLOUD_SANDBOX_SUBNET"] = args.subnet
    os.environ["NBCLOUD_SANDBOX_DIR"] = str(tmp / "sandbox")
    os.environ["NBCLOUD_QUIET"] = "1"
    from nbcloud import ops
    from nbcloud.models import InstanceSpec
    from nbcloud.sandbox import client as sandbox

    name = "benchj"
    try:
        sandbox.start()  # first: a subnet held by another sandbox fails at once
        ctx = ops.Context.create()
        venv = make_venv(tmp)
        server = [bare_start(venv, tmp, "server") for _ in range(args.runs)]
        lab = [bare_start(venv, tmp, "lab") for _ in range(args.runs)]
        result = ops.up(ctx, InstanceSpec(name=name, instance_type="t3.micro"), provider_name="sandbox",
                        wait_jupyter=True)
        t0 = time.monotonic()
        rerun = subprocess.run(["ssh", "-F", str(ctx.paths.ssh_config), "-o", "BatchMode=yes", f"nb-{name}",
                                "sudo bash /opt/nbcloud/bootstrap.sh"], capture_output=True, text=True, timeout=600)
        second = time.monotonic() - t0
        if rerun.returncode != 0:
            raise RuntimeError(f"second bootstrap run failed: {rerun.stderr.strip()[-300:]}")
        last = [line for line in rerun.stdout.splitlines() if "nbcloud-bootstrap" in line][-1:]
    finally:
        try:
            if "ctx" in locals() and ctx.store.get(name) is not None:
                ops.down(ctx, name)
        finally:
            sandbox.reset()
            shutil.rmtree(tmp, ignore_errors=True)

    s, lb = statistics.median(server), statistics.median(lab)
    up = result.seconds["jupyter"]
    phases = ", ".join(f"{k} {v:.2f}" for k, v in result.seconds.items())
    print(f"bare `jupyter server` to /api/status 200: median {s:.2f} s  ({', '.join(f'{x:.2f}' for x in server)})")
    print(f"bare `jupyter lab` to /api/status 200:    median {lb:.2f} s  ({', '.join(f'{x:.2f}' for x in lab)})")
    print(f"nbcloud up to Jupyter answering:          {up:.2f} s  (cumulative: {phases})")
    print(f"ratio up / bare server: {up / s:.2f}  (goal ≤ 2.0); up / bare lab: {up / lb:.2f}")
    print(f"bootstrap second run (ssh nb-{name} sudo bash /opt/nbcloud/bootstrap.sh): {second:.2f} s"
          + (f"  [{last[0].split('nbcloud-bootstrap: ', 1)[-1]}]" if last else ""))


if __name__ == "__main__":
    main()
