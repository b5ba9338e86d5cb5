"""A small page object for driving a real JupyterLab 4 in a real (headless) Chromium through Playwright.

It does what a person does: open the `/lab?token=…` URL, wait for the app, click the Python notebook card in the
launcher, type into the active cell, press Shift+Enter, read the cell's output, save with Ctrl+S, and take a
screenshot.  Nothing here touches JupyterLab's JavaScript internals; everything goes through the DOM and the keyboard,
so a failure means a person would have seen the same failure.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Locator, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

# Generous defaults: a cold JupyterLab on a 2-core box needs several seconds; a kernel start a few more.
APP_TIMEOUT_S = 60.0
KERNEL_TIMEOUT_S = 60.0
CELL_TIMEOUT_S = 60.0



class JupyterLabError(AssertionError):
    """The page did not do what a person would have expected; the message says what was on screen."""


@dataclass
class CellResult:
    index: int
    prompt: str
    output: str


class JupyterLabPage:
    """One browser tab on one JupyterLab.  Create with `JupyterLabPage.open(page, url)`."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self._panel: Locator | None = None

    # -- the app -----------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, page: Page, url: str, *, timeout: float = APP_TIMEOUT_S) -> JupyterLabPage:
        """Go to a `/lab?token=…` URL and wait until the shell and the launcher are on screen."""
        lab = cls(page, url)
        page.goto(url, wait_until="domcontentloaded", timeout=timeout * 1000)
        lab.wait_until_ready(timeout=timeout)
        return lab

    def wait_until_ready(self, *, timeout: float = APP_TIMEOUT_S) -> None:
        try:
            self.page.locator("#jp-main-dock-panel").wait_for(state="visible", timeout=timeout * 1000)
            self.page.locator(".jp-LauncherCard").first.wait_for(state="visible", timeout=timeout * 1000)
        except PlaywrightTimeout as exc:
            raise JupyterLabError(f"JupyterLab did not become ready within {timeout:g} s at {self._where()}: "
                                  f"{self._visible_text()[:500]!r}") from exc

    def dismiss_dialogs(self) -> int:
        """Close modal dialogs (e.g. 'Server Connection Error' after an outage) the way a person would."""
        closed = 0
        for _ in range(5):
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count() == 0:
                break
            buttons = dialog.first.locator(".jp-Dialog-footer button")
            if buttons.count() == 0:
                self.page.keyboard.press("Escape")
            else:
                buttons.last.click()  # the accept/dismiss button is the last one in JupyterLab's dialogs
            closed += 1
            self.page.wait_for_timeout(200)
        return closed

    # -- notebooks ---------------------------------------------------------------------------------------------

    def new_notebook(self, *, kernel_title: str = "Python 3", timeout: float = KERNEL_TIMEOUT_S) -> None:
        """Click the launcher's notebook card for `kernel_title`; wait for the notebook and an idle kernel."""
        before = self.page.locator(".jp-NotebookPanel").count()
        card = self.page.locator('.jp-LauncherCard[data-category="Notebook"]').filter(has_text=kernel_title)
        if card.count() == 0:
            card = self.page.locator('.jp-LauncherCard[data-category="Notebook"]')
        card.first.click()
        panels = self.page.locator(".jp-NotebookPanel")
        try:
            self.page.wait_for_function(
                "n => document.querySelectorAll('.jp-NotebookPanel').length > n", arg=before,
                timeout=timeout * 1000)
        except PlaywrightTimeout as exc:
            raise JupyterLabError(f"no notebook opened within {timeout:g} s") from exc
        panel_id = panels.nth(before).get_attribute("id")
        self._panel = self.page.locator(f"#{panel_id}") if panel_id else panels.nth(before)
        self.panel.locator(".jp-Cell").first.wait_for(state="visible", timeout=timeout * 1000)
        self.wait_for_kernel_idle(timeout=timeout)

    @property
    def panel(self) -> Locator:
        if self._panel is None:
            raise JupyterLabError("no notebook is open (call new_notebook first)")
        return self._panel

    @property
    def cells(self) -> Locator:
        return self.panel.locator(".jp-Notebook .jp-Cell")

    def kernel_status(self) -> str:
        """The notebook toolbar's kernel status ('idle', 'busy', 'connecting', 'disconnected', …), '' if unknown."""
        indicator = self.panel.locator(".jp-Notebook-ExecutionIndicator")
        if indicator.count():
            return indicator.first.get_attribute("data-status") or ""
        return ""

    def wait_for_kernel_idle(self, *, timeout: float = KERNEL_TIMEOUT_S) -> None:
        """Wait until the toolbar names a kernel and shows it idle.

        The execution indicator says 'idle' for a moment before any kernel exists ('No Kernel'), so the kernel name
        is checked too; a cell run then would be silently dropped.
        """
        try:
            self.page.wait_for_function(
                """p => {
                    const name = p.querySelector('.jp-Toolbar-kernelName, .jp-KernelName');
                    const ind = p.querySelector('.jp-Notebook-ExecutionIndicator');
                    const kernel = name ? (name.textContent || '').trim() : '';
                    return ind && ind.getAttribute('data-status') === 'idle' && kernel !== '' && kernel !== 'No Kernel';
                }""",
                arg=self.panel.element_handle(), timeout=timeout * 1000, polling=100)
        except PlaywrightTimeout as exc:
            raise JupyterLabError(f"the kernel did not become idle within {timeout:g} s "
                                  f"(status {self.kernel_status()!r})") from exc

    def wait_for_kernel_connected(self, *, timeout: float = KERNEL_TIMEOUT_S) -> str:
        """Wait until the kernel's websocket is back after an outage; returns the status then shown.

        After a reconnect the status may read 'unknown' until the kernel next reports (JupyterLab 4.6 with
        jupyter_server 2.21 restoring a buffered session), so anything but 'connecting' and 'disconnected' counts as
        connected.  'disconnected' means JupyterLab gave up (it tries 7 times with growing random back-off) and
        fails at once.
        """
        try:
            self.page.wait_for_function(
                """p => {
                    const ind = p.querySelector('.jp-Notebook-ExecutionIndicator');
                    const s = ind ? ind.getAttribute('data-status') : '';
                    return s === 'disconnected' || (s && s !== 'connecting' && s !== 'initializing');
                }""",
                arg=self.panel.element_handle(), timeout=timeout * 1000, polling=200)
        except PlaywrightTimeout as exc:
            raise JupyterLabError(f"the kernel did not reconnect within {timeout:g} s "
                                  f"(status {self.kernel_status()!r})") from exc
        status = self.kernel_status()
        if status == "disconnected":
            raise JupyterLabError("JupyterLab gave up reconnecting to the kernel (status 'disconnected')")
        return status

    # -- cells -------------------------------------------------------------------------------------------------

    def active_cell_index(self) -> int:
        index = self.panel.evaluate(
            "p => Array.from(p.querySelectorAll('.jp-Notebook .jp-Cell')).findIndex("
            "c => c.classList.contains('jp-mod-active'))")
        if not isinstance(index, int) or index < 0:
            raise JupyterLabError("the notebook has no active cell")
        return index

    def type_code(self, code: str) -> None:
        """Put `code` into the active cell's editor (replacing what is there), as typed text."""
        self.dismiss_dialogs()  # a 'Server Connection Error' can pop up late after an outage; a person closes it
        cell = self.cells.nth(self.active_cell_index())
        editor = cell.locator(".cm-content")
        editor.click()
        self.page.keyboard.press("Control+a")
        self.page.keyboard.press("Delete")
        # insert_text sends the whole string as one input event: no auto-closed brackets, no auto-indent surprises.
        self.page.keyboard.insert_text(code)
        actual = editor.inner_text()
        if actual.strip() != code.strip():
            raise JupyterLabError(f"the cell editor holds {actual!r}, not {code!r}")

    def run_active_cell(self, *, timeout: float = CELL_TIMEOUT_S, expect_output: bool = True) -> CellResult:
        """Shift+Enter on the active cell; wait for its execution count and (unless told not to) its output."""
        self.dismiss_dialogs()
        index = self.active_cell_index()
        cell = self.cells.nth(index)
        cell.locator(".cm-content").click()
        self.page.keyboard.press("Shift+Enter")
        return self.wait_for_cell(index, timeout=timeout, expect_output=expect_output)

    def run_cell(self, code: str, *, timeout: float = CELL_TIMEOUT_S, expect_output: bool = True) -> CellResult:
        """Type `code` into the active cell and run it; Shift+Enter leaves the next (new) cell active."""
        self.type_code(code)
        return self.run_active_cell(timeout=timeout, expect_output=expect_output)

    def wait_for_cell(self, index: int, *, timeout: float = CELL_TIMEOUT_S, expect_output: bool = True) -> CellResult:
        cell = self.cells.nth(index)
        prompt = cell.locator(".jp-InputArea-prompt").first
        try:
            self.page.wait_for_function(
                "el => /^\\s*\\[\\d+\\]:\\s*$/.test(el.textContent || '')", arg=prompt.element_handle(),
                timeout=timeout * 1000)
            if expect_output:
                cell.locator(".jp-OutputArea-output").first.wait_for(state="visible", timeout=timeout * 1000)
        except PlaywrightTimeout as exc:
            raise JupyterLabError(
                f"cell {index} did not finish within {timeout:g} s: prompt {prompt.inner_text()!r}, "
                f"kernel {self.kernel_status()!r}, output {self.cell_output(index)!r}") from exc
        return CellResult(index=index, prompt=prompt.inner_text().strip(), output=self.cell_output(index))

    def cell_output(self, index: int) -> str:
        texts = self.cells.nth(index).locator(".jp-OutputArea-output").all_inner_texts()
        return "\n".join(t.strip() for t in texts).strip()

    # -- saving and evidence -----------------------------------------------------------------------------------

    def notebook_title(self) -> str:
        """The tab label of the open notebook, e.g. 'Untitled.ipynb'."""
        tab = self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current .lm-TabBar-tabLabel")
        return tab.first.inner_text().strip()

    def save(self, *, timeout: float = CELL_TIMEOUT_S) -> str:
        """Ctrl+S; accept the 'Rename file' prompt a first save of an Untitled notebook shows; wait until clean.

        Returns the notebook's file name.
        """
        self.panel.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Control+s")
        dirty = self.page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.jp-mod-current.jp-mod-dirty")
        accept = self.page.locator(".jp-Dialog .jp-Dialog-footer button.jp-mod-accept")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if accept.count():
                accept.first.click()
            elif dirty.count() == 0:
                return self.notebook_title()
            self.page.wait_for_timeout(200)
        raise JupyterLabError(f"the notebook was still unsaved after {timeout:g} s: {self._visible_text()[-500:]!r}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=False)
        return path

    # -- helpers -----------------------------------------------------------------------------------------------

    def _where(self) -> str:
        return re.sub(r"token=[^&]+", "token=…", self.page.url)

    def _visible_text(self) -> str:
        try:
            return self.page.locator("body").inner_text(timeout=2000)
        except PlaywrightTimeout:
            return ""
