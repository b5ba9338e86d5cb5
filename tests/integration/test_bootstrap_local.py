"""The bootstrap run for real on this machine, in a throwaway root (NBCLOUD_ROOT), without systemd.

Steps python, venv (uv from the package index, pinned packages with durable outputs and the gateway), data and
config; then Jupyter from that venv with the rendered durable-outputs config. The services step needs an init
(the sandbox test covers it).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nbcloud.remote.bootstrap import render_bootstrap
from nbcloud.remote.spec import BootstrapSpec
from nbcloud.remote.units import JUPYTER_LAUNCHER, jupyter_launcher_source

pytestmark = pytest.mark.timeout(300)


def uv_bin() -> str:
    uv = pytest.importorskip("uv")
    return str(uv.find_uv_bin())


def run(script: Path, root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "NBCLOUD_ROOT": str(root), "NBCLOUD_STEPS": "python venv data config", **env}
    return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=full, timeout=280)


def test_failed_step_is_named_and_exits_nonzero(tmp_path: Path) -> None:
    script = tmp_path / "bootstrap.sh"
    script.write_text(render_bootstrap(BootstrapSpec(name="fails")))
    done = run(script, tmp_path / "root", NBCLOUD_PYTHON="/nonexistent/python3", NBCLOUD_NO_INDEX="1")
    assert done.returncode != 0
    assert "nbcloud-bootstrap: step python failed" in done.stdout
    log = (tmp_path / "root/var/log/nbcloud/bootstrap.log").read_text()
    assert "step python failed" in log and "no Python at /nonexistent/python3" in log
    assert not (tmp_path / "root/var/lib/nbcloud/bootstrap.done").exists()


def test_output_appended_to_the_log_is_written_once(tmp_path: Path) -> None:
    """As nbcloud-data.service runs it (StandardOutput=append: the bootstrap log): each line once, not twice."""
    script = tmp_path / "bootstrap.sh"
    script.write_text(render_bootstrap(BootstrapSpec(name="fails")))
    log = tmp_path / "root/var/log/nbcloud/bootstrap.log"
    log.parent.mkdir(parents=True)
    with log.open("a") as out:
        env = {**os.environ, "NBCLOUD_ROOT": str(tmp_path / "root"), "NBCLOUD_STEPS": "python venv",
               "NBCLOUD_NO_INDEX": "1", "NBCLOUD_PYTHON": "/nonexistent/python3"}
        done = subprocess.run(["bash", str(script)], stdout=out, stderr=out, env=env, timeout=60)
    assert done.returncode != 0
    assert log.read_text().count("step python failed") == 1, log.read_text()


def test_bootstrap_steps_in_a_throwaway_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    spec = BootstrapSpec(name="local", durable_outputs=True, gateway=True, cull_idle_minutes=30)
    script = tmp_path / "bootstrap.sh"
    script.write_text(render_bootstrap(spec))
    env = {"NBCLOUD_UV": uv_bin(), "NBCLOUD_PYTHON": "/usr/bin/python3"}
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3")
    first = run(script, root, **env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "step venv: installed" in first.stdout
    venv = root / "opt/nbcloud/venv"
    for exe in ("jupyter-lab", "jupyter-kernelgateway", "python"):
        assert (venv / "bin" / exe).exists()
    assert (venv / "share/jupyter/kernels/python3/kernel.json").exists()
    assert (root / "opt/nbcloud/bootstrap.sh").read_text() == script.read_text()
    assert oct((root / "home/ubuntu/.config/nbcloud").stat().st_mode & 0o777) == "0o700"
    assert oct((root / "var/log/nbcloud/bootstrap.log").stat().st_mode & 0o777) == "0o644"

    # the venv is byte-compiled once, in the background (Jupyter runs as a user who cannot write its __pycache__)
    assert "byte-compiling the venv in the background" in first.stdout
    packages = (venv / ".nbcloud-packages").read_text()
    deadline = time.monotonic() + 240
    while not (venv / ".nbcloud-compiled").exists() or (venv / ".nbcloud-compiled").read_text() != packages:
        assert time.monotonic() < deadline, "the background byte-compile did not finish"
        time.sleep(0.5)
    kernelapp = next(venv.glob("lib/python3*/site-packages/ipykernel/kernelapp.py"))
    assert list((kernelapp.parent / "__pycache__").glob("kernelapp.*.pyc")), "ipykernel was not byte-compiled"

    second = run(root / "opt/nbcloud/bootstrap.sh", root, **env)
    assert "byte-compiling" not in second.stdout  # once per package set
    assert second.returncode == 0, second.stdout + second.stderr
    assert "step venv: already installed" in second.stdout and "0 file(s) changed" in second.stdout
    assert float(re.findall(r"done in ([0-9.]+) s", second.stdout)[-1]) <= 2.0

    # Jupyter from that venv through the unit's launcher, with the rendered durable-outputs config: it waits for the
    # token file, then answers with that token
    home = root / "home/ubuntu"
    token_file = home / ".config/nbcloud/token"
    launcher = root / JUPYTER_LAUNCHER.lstrip("/")
    assert launcher.read_text() == jupyter_launcher_source()
    config = (root / "opt/nbcloud/etc/jupyter_server_config.py").read_text().replace("/home/ubuntu", str(home))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = config.replace("c.ServerApp.port = 8888", f"c.ServerApp.port = {port}")
    (tmp_path / "config.py").write_text(config)
    log = open(tmp_path / "jupyter.log", "wb")  # noqa: SIM115 - the server writes to it until killed
    proc = subprocess.Popen(
        [str(venv / "bin/python"), str(launcher), f"--config={tmp_path / 'config.py'}", "--allow-root"],
        cwd=home, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(home), "JUPYTER_TOKEN_FILE": str(token_file), "NBCLOUD_ROOT": str(root)},
    )
    try:
        time.sleep(3)  # imports done by now; without a token the server must not have started
        assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()[-2000:]
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "Jupyter started before its token arrived"
        token_file.write_text("local-test-token")
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                     headers={"Authorization": "token local-test-token"})
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, (tmp_path / "jupyter.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "jupyter did not answer"
                time.sleep(0.2)
        text = (tmp_path / "jupyter.log").read_text()
        for ext in ("jupyter_server_ydoc", "jupyter_server_nbmodel", "jupyterlab"):
            assert f"{ext} | extension was successfully loaded" in text
    finally:
        proc.terminate()
        proc.wait(10)
