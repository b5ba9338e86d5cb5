"""Issue 6, in a real browser: JupyterLab through a connection that breaks and heals keeps working without a reload.

A real `jupyter lab` on 127.0.0.1, a loopback TCP proxy of ours in front of it (standing in for the tunnel's local
end), and Debian's headless Chromium driven by Playwright.  The proxy is cut for 20 s (all connections closed, new
ones refused) and restored; the same page must then run another cell, its kernel websocket having reconnected by
itself.
"""

from __future__ import annotations

import json
import time

import pytest
from playwright.sync_api import Page

from .conftest import LabServer, LoopbackProxy
from .jupyterlab_page import JupyterLabPage

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

OUTAGE_S = 20


def test_notebook_runs_cells_and_survives_a_20s_outage_without_reload(
    page: Page, jupyter_lab: LabServer, proxy_factory: type[LoopbackProxy]
) -> None:
    proxy = proxy_factory(jupyter_lab.port)
    lab = JupyterLabPage.open(page, jupyter_lab.url(proxy.port))
    lab.new_notebook()

    first = lab.run_cell("1+1")
    assert first.output == "2", f"1+1 showed {first.output!r}"

    second = lab.run_cell("import os; os.getpid()")
    assert second.output.isdigit(), f"os.getpid() showed {second.output!r}"
    kernel_pid = int(second.output)

    name = lab.save()
    saved = json.loads((jupyter_lab.root_dir / name).read_text())
    outputs = [o for cell in saved["cells"] for o in cell.get("outputs", [])]
    saved_outputs = ["".join(o.get("data", {}).get("text/plain", [])) for o in outputs]
    assert "2" in saved_outputs and str(kernel_pid) in saved_outputs, saved_outputs
    lab.screenshot("browser_local")

    # The outage: every connection through the proxy is closed and new ones are refused for OUTAGE_S.
    loaded_url = page.url
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    connections_before = proxy.accepted
    proxy.cut()
    time.sleep(OUTAGE_S)
    proxy.restore()

    lab.dismiss_dialogs()  # e.g. "Server Connection Error", which a person would dismiss
    lab.wait_for_kernel_connected(timeout=120)  # JupyterLab's own back-off: a reconnect may come a minute later
    third = lab.run_cell("import os; (os.getpid(), 6*7)")
    assert third.output == f"({kernel_pid}, 42)", f"after the outage the cell showed {third.output!r}"
    assert proxy.accepted > connections_before, "the page reached the server without going through the proxy"
    assert navigations == [] and page.url == loaded_url, f"the page reloaded or navigated: {navigations}"
    lab.wait_for_kernel_idle(timeout=30)
    lab.screenshot("browser_local_after_outage")
