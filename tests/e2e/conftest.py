"""Fixtures for the real-browser tests: Debian's Chromium driven by Playwright, a real JupyterLab, a loopback proxy.

Chromium is launched with the flags that keep it off the network and a new empty profile; it never downloads
anything (no `playwright install`: `executable_path` is Debian's /usr/bin/chromium).  Every process started here is
stopped in a finalizer, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is missing (pip install playwright; no `playwright install` needed)"
    return None


# -- the browser -------------------------------------------------------------------------------------------------


@pytest.fixture
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """A headless Chromium with a new empty profile (one context); closed, and its profile removed, at the end."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,  # type: ignore[arg-type]
        )
        try:
            yield context
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context: BrowserContext) -> Page:
    new = browser_context.new_page()
    new.set_default_timeout(30_000)
    return new


# -- a real JupyterLab on loopback ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LabServer:
    port: int
    token: str
    root_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/lab?token={self.token}"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.2)
    raise RuntimeError(f"jupyter lab did not answer {url} within {timeout:g} s ({last})")


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively, from /proc (kernels run in their own sessions, so killpg misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def stop_process_tree(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM the process group (a clean jupyter shutdown stops its kernels); SIGKILL whatever is left."""
    family = _descendants(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    for pid in family:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def private_jupyter_env(private: Path) -> dict[str, str]:
    """Environment for a `jupyter lab` that reads and writes only under ``private`` (no ~/.jupyter, no workspace
    from an earlier run) and never asks about Jupyter news or updates (which would fetch them from the internet)."""
    # The user setting that stops JupyterLab asking about (and fetching) Jupyter news and update checks.
    notification = private / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return {
        "JUPYTER_CONFIG_DIR": str(private / "config"),
        "JUPYTER_RUNTIME_DIR": str(private / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(private / "lab-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(private / "lab-workspaces"),
        "IPYTHONDIR": str(private / "ipython"),
        "JUPYTER_PLATFORM_DIRS": "1",
    }


@pytest.fixture
def jupyter_lab(tmp_path: Path) -> Iterator[LabServer]:
    """A real `jupyter lab` on 127.0.0.1:<free port>, token from JUPYTER_TOKEN, root dir a temp dir.

    Its config, data, runtime and settings dirs are private temp dirs; news and update checks are off, so it makes
    no outside connection.  The server and its kernels (one process group) are stopped in the finalizer.
    """
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        pytest.skip("jupyterlab is not installed (pip install 'nbcloud[lab]')")
    root = tmp_path / "notebooks"
    root.mkdir()
    token = secrets.token_hex(24)
    env = dict(os.environ) | private_jupyter_env(tmp_path / "jupyter") | {"JUPYTER_TOKEN": token}
    port = free_port()
    log = tmp_path / "jupyter-lab.log"
    argv = [
        sys.executable, "-m", "jupyterlab",
        "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = LabServer(port=port, token=token, root_dir=root, process=process, log=log)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", process, timeout=60)
        yield server
    finally:
        stop_process_tree(process)


# -- a loopback TCP proxy that can be cut -----------------------------------------------------------------------


class LoopbackProxy:
    """127.0.0.1:<listen_port> → 127.0.0.1:<target_port>, forwarding bytes both ways.

    `cut()` closes every open connection and stops listening, so new connections are refused (the local end of a
    tunnel that went away); `restore()` listens again on the same port.  One selector thread does all the work.
    """

    def __init__(self, target_port: int, listen_port: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = listen_port or free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._loop, name="loopback-proxy", daemon=True)
        self._listen()
        self._thread.start()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.setblocking(False)
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def cut(self) -> None:
        """Close all connections and refuse new ones."""
        with self._lock:
            if self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            for sock in list(self._pairs):
                self._drop(sock)
        self._wake()

    def restore(self) -> None:
        with self._lock:
            if self._listener is None:
                self._listen()
        self._wake()

    def close(self) -> None:
        self._stopping = True
        self.cut()
        self._thread.join(5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self.accepted += 1
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self._selector.register(client, selectors.EVENT_READ, "data")
        self._selector.register(upstream, selectors.EVENT_READ, "data")

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        try:
            peer.setblocking(True)
            peer.settimeout(10)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)

    def _loop(self) -> None:
        while not self._stopping:
            events = self._selector.select(timeout=0.5)
            with self._lock:
                for key, _ in events:
                    if key.data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    elif key.data == "accept":
                        if self._listener is not None and key.fileobj is self._listener:
                            self._accept()
                    elif key.fileobj in self._pairs:
                        self._forward(key.fileobj)


@pytest.fixture
def proxy_factory() -> Iterator[type[LoopbackProxy]]:
    """Make LoopbackProxy instances that are all closed at the end of the test."""
    made: list[LoopbackProxy] = []

    class _Tracked(LoopbackProxy):
        def __init__(self, target_port: int, listen_port: int | None = None) -> None:
            super().__init__(target_port, listen_port)
            made.append(self)

    try:
        yield _Tracked
    finally:
        for proxy in made:
            proxy.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed browser test, keep a screenshot of what the page showed: artifacts/<test>-failure.png."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    page = getattr(item, "funcargs", {}).get("page")
    if page is None:
        return
    artifacts = Path(__file__).resolve().parents[2] / "artifacts"
    with contextlib.suppress(Exception):
        artifacts.mkdir(exist_ok=True)
        page.screenshot(path=str(artifacts / f"{item.name}-failure.png"))
