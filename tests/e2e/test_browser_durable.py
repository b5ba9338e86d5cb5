"""Durable outputs, `up`'s default, in the real JupyterLab (jupyter/notebook#1150): a page reloaded while a cell runs
shows every line the cell printed, the one printed while no page was open included; a second tab on the notebook
shows them too; a kernel restart and a rerun work afterwards."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from .jupyterlab_page import JupyterLabPage
from .test_browser_sandbox import Cli

pytestmark = [pytest.mark.sandbox, pytest.mark.browser, pytest.mark.timeout(600)]

NAME = "durable"
LINES = 20
CELL = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(1)"


@pytest.fixture
def nbcloud(sandbox: Any, tmp_path: Path) -> Iterator[Cli]:
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


def _open_notebook(page: Page, url: str, path: str) -> JupyterLabPage:
    """A new page straight on the notebook, as a person re-opens it (JupyterLab's /lab/tree/PATH)."""
    parts = urllib.parse.urlsplit(url)
    page.goto(f"{parts.scheme}://{parts.netloc}/lab/tree/{path}?{parts.query}", wait_until="domcontentloaded")
    lab = JupyterLabPage(page, url)
    panel = page.locator(".jp-NotebookPanel").first
    panel.wait_for(state="visible", timeout=120_000)
    lab._panel = panel
    lab.cells.first.wait_for(state="visible", timeout=120_000)
    return lab


def test_reload_mid_cell_keeps_every_output(page: Page, browser_context: BrowserContext, nbcloud: Cli) -> None:
    nbcloud.json("up", NAME, "--provider", "sandbox", "--no-connect")  # no option: the default
    url = nbcloud.json("connect", NAME, "--no-browser")["url"]

    lab = JupyterLabPage.open(page, url, timeout=120)
    lab.new_notebook(timeout=120)
    path = lab.notebook_title()
    lab.type_code(CELL)
    lab.cells.first.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    lab.cells.first.locator(".jp-OutputArea-output").first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(2000)
    before = lab.cell_output(0).split()
    assert 0 < len(before) < LINES, f"the cell should still run: {before}"

    page.close()  # the tab goes away mid-cell: nothing of the browser is attached for a few seconds
    page = browser_context.new_page()
    page.wait_for_timeout(4000)
    again = _open_notebook(page, url, path)
    again.wait_for_cell(0, timeout=90)
    all_lines = [str(i) for i in range(LINES)]
    page.wait_for_timeout(1500)  # the last line lands in the document just before the prompt changes
    assert again.cell_output(0).split() == all_lines, again.cell_output(0)

    second = _open_notebook(browser_context.new_page(), url, path)  # a second tab on the same notebook
    second.page.wait_for_timeout(1500)
    assert second.cell_output(0).split() == all_lines, second.cell_output(0)
    again.screenshot("durable_after_reload")

    # a kernel restart and a rerun still work on the server-side execution path
    page.bring_to_front()
    again.panel.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")
    page.keyboard.press("0")
    page.keyboard.press("0")
    page.locator(".jp-Dialog").first.wait_for(state="visible", timeout=30_000)
    again.dismiss_dialogs()
    again.wait_for_kernel_idle(timeout=120)
    again.cells.nth(again.cells.count() - 1).locator(".cm-content").click()
    assert again.run_cell("21*2", timeout=120).output == "42"
