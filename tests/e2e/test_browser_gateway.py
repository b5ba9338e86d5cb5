"""Issue 9 in a real browser: `nbcloud lab` (JupyterLab on this machine, kernels on the instance) in Chromium.

One sandbox instance in gateway mode; `nbcloud lab NAME PATH --no-browser --json` starts the local JupyterLab with
`--gateway-url` to the tunnel; Chromium opens its URL, makes a notebook and runs `socket.gethostname()`. Sandbox
instances have their own UTS namespace, so the answer is the instance's hostname only if the kernel really runs
there: a kernel started by the local server itself would print this machine's name and fail the test. The notebook
file must land in PATH on this machine (the local server's contents) and not in the instance's home.
"""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from .conftest import private_jupyter_env
from .jupyterlab_page import JupyterLabPage
from .test_browser_sandbox import Cli

pytestmark = [pytest.mark.sandbox, pytest.mark.browser, pytest.mark.timeout(600)]

NAME = "gwbrowser"
PROBE = "import socket; socket.gethostname()"


@pytest.fixture
def gateway_cli(sandbox: Any, tmp_path: Path) -> Iterator[Cli]:
    """The real CLI in a private NBCLOUD_HOME; the local lab it starts reads only private Jupyter dirs.

    Finalizer (also on failure): stop the local lab (and with it the kernel it holds on the instance), then down.
    """
    import os

    env = dict(os.environ) | private_jupyter_env(tmp_path / "jupyter") | {
        "NBCLOUD_HOME": str(tmp_path / "nbhome"),
        "NBCLOUD_USER_SSH_CONFIG": str(tmp_path / "dot-ssh" / "config"),
        "NBCLOUD_SANDBOX_DIR": str(sandbox.sandbox_dir),
        "NBCLOUD_QUIET": "1",
    }
    env.pop("JUPYTER_TOKEN", None)
    # The CLI under test is this checkout's, whatever nbcloud the interpreter may have installed.
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    cli = Cli(env)
    try:
        yield cli
    finally:
        cli.run("lab", NAME, "--stop", check=False, timeout=60)
        cli.run("down", NAME, "--delete-data", "--yes", check=False, timeout=300)


def _ssh(cli: Cli, command: str) -> subprocess.CompletedProcess[str]:
    """Plain OpenSSH through the user's ~/.ssh/config (the Include nbcloud wrote), as a person would type it."""
    return subprocess.run(["ssh", "-F", cli.env["NBCLOUD_USER_SSH_CONFIG"], "-o", "BatchMode=yes", f"nb-{NAME}",
                           command], capture_output=True, text=True, timeout=60)


def _print_logs(cli: Cli, local_log: Path) -> None:
    """On a failure: what the local server and the instance's gateway said (shown in pytest's captured stdout)."""
    local = local_log.read_text(errors="replace").splitlines()[-60:] if local_log.exists() else ["(no log)"]
    print(f"--- local JupyterLab log {local_log} (last 60 lines)", *local, sep="\n")
    remote = cli.run("logs", NAME, "--gateway", "-n", "60", check=False, timeout=60)
    print("--- gateway log on the instance (last 60 lines)", remote.stdout, remote.stderr, sep="\n")
    page_console = cli.run("logs", NAME, "-n", "20", check=False, timeout=60)
    print("--- Jupyter log on the instance (last 20 lines)", page_console.stdout, sep="\n")


def test_local_lab_in_chromium_runs_its_kernel_on_the_instance(page: Page, gateway_cli: Cli, tmp_path: Path) -> None:
    t0 = time.monotonic()

    def mark(what: str) -> None:  # where the time goes, shown with -s or on a failure
        print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)

    gateway_cli.json("up", NAME, "--provider", "sandbox", "--mode", "gateway", "--no-connect")
    mark("up --mode gateway")
    instance_hostname = _ssh(gateway_cli, "hostname").stdout.strip()
    # The test tells the two apart by name: it means nothing if they were the same.
    assert instance_hostname and instance_hostname != socket.gethostname(), instance_hostname

    root = tmp_path / "notebooks"
    root.mkdir()
    started = gateway_cli.json("lab", NAME, str(root), "--no-browser")
    mark("nbcloud lab")
    assert started["root_dir"] == str(root.resolve()), started
    assert started["url"].startswith("http://127.0.0.1:") and "token=" in started["url"], started
    assert started["gateway_url"].startswith("http://127.0.0.1:"), started

    try:
        lab = JupyterLabPage.open(page, started["url"], timeout=120)
        mark("JupyterLab loaded in Chromium")
        lab.new_notebook(timeout=180)  # the kernel starts on the instance, through the gateway and the tunnel
        mark("notebook open, kernel idle")
        result = lab.run_cell(PROBE, timeout=120)
        mark("cell ran")
    except Exception:
        _print_logs(gateway_cli, Path(started["log_file"]))
        raise
    assert result.output == repr(instance_hostname), (
        f"the cell printed {result.output!r}: expected the instance's {instance_hostname!r} "
        f"(this machine is {socket.gethostname()!r})")
    lab.screenshot("browser_gateway")

    saved_name = lab.save()
    mark("saved")
    local = root / saved_name
    assert local.is_file(), f"{saved_name} is not in {root}: {sorted(p.name for p in root.iterdir())}"
    saved = json.loads(local.read_text())
    sources = ["".join(cell.get("source", "")) for cell in saved["cells"]]
    outputs = ["".join(o.get("data", {}).get("text/plain", "")) for cell in saved["cells"]
               for o in cell.get("outputs", [])]
    assert PROBE in sources and repr(instance_hostname) in outputs, (sources, outputs)
    # Notebooks stay on this machine: the instance's home (the gateway's working directory) has no copy.
    remote = _ssh(gateway_cli, f"test -e ~/{shlex.quote(saved_name)} && echo present || echo absent").stdout.strip()
    assert remote == "absent", f"{saved_name} is on the instance too"
