"""Issue 13's acceptance matrix in the real JupyterLab, in Chromium: the 20-line cell with a link cut mid-cell.

For each cut length (``--cuts 10,60,300`` seconds) and each repetition (``--repeat N``): a new tab on a new
notebook, the cell ``for i in range(20): print(i); time.sleep(1)``, a ``nbcloud sandbox fault IID link-down``
once line 2 is shown, ``link-up`` after the cut, then the cell's end. Per run it reports: all 20 lines shown in
order on the same page (no reload), whether a "Server Connection Error" dialog (any dialog) appeared, and the
longest time the kernel indicator said "disconnected" (and the longest it was not connected at all: connecting,
disconnected or unknown). Pass = all lines, no dialog, never "disconnected" for more than 2 s.

Not part of the test suite (it takes minutes per cut). Needs root, the sandbox, /usr/bin/chromium and playwright
(as tests/e2e). It runs the real CLI under its own NBCLOUD_HOME (``--home``), on the sandbox that
``nbcloud sandbox start`` started for that environment (it starts one if none runs; ``--reset`` resets it at the
end). Example: ``python bench/browser_cut_matrix.py --cuts 10,60 --repeat 3``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT  # noqa: E402
from tests.e2e.jupyterlab_page import JupyterLabPage  # noqa: E402

LINES = 20
CELL = f"import time\nfor i in range({LINES}):\n    print(i, flush=True)\n    time.sleep(1)"
NOT_CONNECTED = ("connecting", "disconnected", "unknown", "")
# What the page shows, read in one evaluation: the indicator's status, any dialog's text, the cell's output lines.
PROBE = """p => {
    const ind = p.querySelector('.jp-Notebook-ExecutionIndicator');
    const dialogs = Array.from(document.querySelectorAll('.jp-Dialog')).map(d => (d.innerText || '').slice(0, 200));
    const cell = p.querySelectorAll('.jp-Notebook .jp-Cell')[0];
    const outs = cell ? Array.from(cell.querySelectorAll('.jp-OutputArea-output')).map(o => o.innerText) : [];
    const prompt = cell ? (cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '' : '';
    return {status: ind ? ind.getAttribute('data-status') || '' : '', dialogs, output: outs.join('\\n'), prompt};
}"""


@dataclass
class Run:
    cut_s: float
    index: int
    lines_in_order: bool
    lines: list[str]
    dialog: str | None  # the first dialog's text, if any appeared
    longest_disconnected_s: float
    longest_not_connected_s: float
    finished: bool  # the cell's prompt shows its execution count

    @property
    def passed(self) -> bool:
        return self.lines_in_order and self.dialog is None and self.longest_disconnected_s <= 2.0


def nb(env: dict[str, str], *args: str, timeout: float = 900) -> Any:
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args, "--json"], capture_output=True,
                          text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"nbcloud {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout or "null")


def fault(env: dict[str, str], instance_id: str, kind: str) -> None:
    subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "sandbox", "fault", instance_id, kind], env=env,
                   check=True, capture_output=True, timeout=60)


def one_run(context: Any, url: str, env: dict[str, str], instance_id: str, cut_s: float, index: int) -> Run:
    page = context.new_page()
    page.set_default_timeout(60_000)
    # A workspace per run: JupyterLab would otherwise restore the last run's notebook instead of its launcher.
    parts = urllib.parse.urlsplit(url)
    fresh = f"{parts.scheme}://{parts.netloc}/lab/workspaces/cut{cut_s:.0f}-{index}?{parts.query}"
    try:
        lab = JupyterLabPage.open(page, fresh, timeout=120)
        lab.new_notebook(timeout=120)
        lab.type_code(CELL)
        lab.cells.first.locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        handle = lab.panel.element_handle()
        state: dict[str, Any] = {}
        spans = {"disconnected": 0.0, "not_connected": 0.0}
        since: dict[str, float | None] = {"disconnected": None, "not_connected": None}
        dialog: str | None = None
        cut_at = healed_at = None
        deadline = time.monotonic() + LINES + cut_s + 120
        while time.monotonic() < deadline:
            state = page.evaluate(PROBE, handle)
            now = time.monotonic()
            for key, bad in (("disconnected", state["status"] == "disconnected"),
                             ("not_connected", state["status"] in NOT_CONNECTED)):
                start = since[key]
                if bad and start is None:
                    since[key] = now
                elif not bad and start is not None:
                    spans[key] = max(spans[key], now - start)
                    since[key] = None
            if state["dialogs"] and dialog is None:
                dialog = state["dialogs"][0].strip().replace("\n", " ")
            shown = state["output"].split()
            if cut_at is None and len(shown) >= 3:
                fault(env, instance_id, "link-down")
                cut_at = time.monotonic()
            if cut_at is not None and healed_at is None and now - cut_at >= cut_s:
                fault(env, instance_id, "link-up")
                healed_at = time.monotonic()
            finished = healed_at is not None and state["prompt"].strip().strip("[]:").strip().isdigit()
            if finished:
                page.wait_for_timeout(1500)  # the last output lands just before the prompt changes
                state = page.evaluate(PROBE, handle)
                break
            page.wait_for_timeout(200)
        if healed_at is None and cut_at is not None:
            fault(env, instance_id, "link-up")
        end = time.monotonic()
        for key, start in since.items():
            if start is not None:
                spans[key] = max(spans[key], end - start)
        lines = state.get("output", "").split()
        return Run(cut_s, index, lines == [str(i) for i in range(LINES)], lines, dialog,
                   round(spans["disconnected"], 1), round(spans["not_connected"], 1),
                   state.get("prompt", "").strip().strip("[]:").strip().isdigit())
    finally:
        page.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuts", default="10,60", help="cut lengths in seconds, comma-separated (e.g. 10,60,300)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--name", default="cutmatrix")
    ap.add_argument("--home", default=os.environ.get("NBCLOUD_HOME") or "/tmp/nbcloud-cut-matrix")
    ap.add_argument("--reset", action="store_true", help="reset the sandbox at the end")
    ap.add_argument("--keep", action="store_true", help="keep the instance (default: down at the end)")
    ns = ap.parse_args()
    if not CHROMIUM.exists():
        print(f"{CHROMIUM} is missing", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, NBCLOUD_HOME=ns.home, NBCLOUD_QUIET="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "sandbox", "start"], env=env, check=False,
                   capture_output=True, timeout=300)
    runs: list[Run] = []
    try:
        up = nb(env, "up", ns.name, "--provider", "sandbox", "--no-connect", "--idle-stop", "off")
        url = nb(env, "connect", ns.name, "--no-browser")["url"]
        print(f"instance {up['instance_id']} up; tunnel {nb(env, 'status', ns.name).get('tunnel_mode')}",
              flush=True)
        profile = Path(ns.home) / "chromium-profile"
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM),
                                                            headless=True, args=CHROMIUM_ARGS,
                                                            viewport=VIEWPORT)  # type: ignore[arg-type]
            try:
                for cut in (float(c) for c in ns.cuts.split(",")):
                    for i in range(ns.repeat):
                        try:
                            run = one_run(context, url, env, up["instance_id"], cut, i + 1)
                        except Exception as exc:  # one broken run (the page never came up) is a failed run
                            fault(env, up["instance_id"], "link-up")
                            run = Run(cut, i + 1, False, [], f"run failed: {str(exc)[:300]}", 0.0, 0.0, False)
                        runs.append(run)
                        print(json.dumps({**asdict(run), "passed": run.passed, "lines": " ".join(run.lines)}),
                              flush=True)
            finally:
                context.close()
    finally:
        if not ns.keep:
            subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "down", ns.name, "--delete-data", "--yes"],
                           env=env, capture_output=True, timeout=600)
        if ns.reset:
            subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "sandbox", "reset"], env=env,
                           capture_output=True, timeout=600)
    print("\ncut    runs  passed  all-lines  dialog  longest 'disconnected'  longest not connected")
    for cut in sorted({r.cut_s for r in runs}):
        rs = [r for r in runs if r.cut_s == cut]
        print(f"{cut:4.0f} s {len(rs):5d} {sum(r.passed for r in rs):7d} {sum(r.lines_in_order for r in rs):10d} "
              f"{sum(r.dialog is not None for r in rs):7d} {max(r.longest_disconnected_s for r in rs):18.1f} s "
              f"{max(r.longest_not_connected_s for r in rs):20.1f} s")
    return 0 if runs and all(r.passed for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
