"""Issue 6 end to end on the sandbox cloud: `nbcloud up`, `nbcloud connect --no-browser --json`, the URL in Chromium.

The instance's link is cut for 20 s (the sandbox's `link-down` fault) and healed; the self-healing tunnel comes
back and the same page, never reloaded, runs another cell on the same kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from .jupyterlab_page import JupyterLabPage

pytestmark = [pytest.mark.sandbox, pytest.mark.browser, pytest.mark.timeout(600)]

OUTAGE_S = 20
NAME = "browser"


@dataclass
class Cli:
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"nbcloud {' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}")
        return done

    def json(self, *args: str, timeout: float = 600) -> Any:
        return json.loads(self.run(*args, "--json", timeout=timeout).stdout)


@pytest.fixture
def nbcloud(sandbox: Any, tmp_path: Path) -> Iterator[Cli]:
    """The real CLI in a private NBCLOUD_HOME on the session's sandbox; disconnect and down in the finalizer."""
    env = dict(os.environ) | {
        "NBCLOUD_HOME": str(tmp_path / "nbhome"),
        "NBCLOUD_USER_SSH_CONFIG": str(tmp_path / "dot-ssh" / "config"),
        "NBCLOUD_SANDBOX_DIR": str(sandbox.sandbox_dir),
        "NBCLOUD_QUIET": "1",
    }
    cli = Cli(env)
    try:
        yield cli
    finally:
        cli.run("disconnect", NAME, check=False, timeout=60)
        cli.run("down", NAME, "--delete-data", "--yes", check=False, timeout=300)


def _wait_for_server_through_tunnel(url: str, *, timeout: float) -> None:
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    status = f"{parts.scheme}://{parts.netloc}/api/status?token={token}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(status, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not answer through the tunnel within {timeout:g} s of the heal")
        time.sleep(0.5)


def test_sandbox_notebook_survives_link_cut_without_reload(page: Page, nbcloud: Cli, sandbox: Any) -> None:
    from nbcloud.sandbox import client as sandbox_client

    up = nbcloud.json("up", NAME, "--provider", "sandbox", "--no-connect")
    connected = nbcloud.json("connect", NAME, "--no-browser")
    url = connected["url"]
    assert url.startswith("http://127.0.0.1:") and "token=" in url, connected

    lab = JupyterLabPage.open(page, url, timeout=120)
    lab.new_notebook(timeout=120)
    first = lab.run_cell("import socket, os; (socket.gethostname(), os.getpid())")
    assert first.output.startswith("("), f"the first cell showed {first.output!r}"
    assert lab.run_cell("1+1").output == "2"
    lab.screenshot("browser_sandbox")

    loaded_url = page.url
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    sandbox_client.fault(up["instance_id"], "link-down", sandbox_dir=sandbox.sandbox_dir)
    try:
        time.sleep(OUTAGE_S)
    finally:
        sandbox_client.fault(up["instance_id"], "link-up", sandbox_dir=sandbox.sandbox_dir)

    _wait_for_server_through_tunnel(url, timeout=120)  # as a person waits for the page to answer again
    lab.dismiss_dialogs()
    lab.wait_for_kernel_connected(timeout=180)
    again = lab.run_cell("import socket, os; (socket.gethostname(), os.getpid())", timeout=120)
    assert again.output == first.output, f"after the link cut: {again.output!r}, before: {first.output!r}"
    assert navigations == [] and page.url == loaded_url, f"the page reloaded or navigated: {navigations}"
    lab.screenshot("browser_sandbox_after_outage")
