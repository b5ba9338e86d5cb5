"""Gateway mode, the parts that need no Jupyter process: version rule, command lines, the remote enable script,
and each way a gateway can answer wrong (a tiny stdlib HTTP server stands in for a misbehaving gateway)."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from nbcloud.errors import UsageError
from nbcloud.ops import Context
from nbcloud.ops.gateway import check_gateway, check_versions, lab, lab_argv
from nbcloud.remote.gateway_check import enable_script
from nbcloud.state import Record


def test_versions_share_a_major() -> None:
    check_versions("2.21.1", "2.14.0")
    with pytest.raises(UsageError, match=r"version mismatch.*6\.5\.4.*3\.0\.x") as info:
        check_versions("6.5.4", "2.21.1")  # jupyter-kernel-gateway 2.x answers with its notebook version
    assert "nbcloud gateway" in info.value.hint


def test_lab_command_line_has_no_secret(tmp_path: Path) -> None:
    argv = lab_argv(tmp_path, 8890, "http://127.0.0.1:9889")
    joined = " ".join(argv)
    assert "--ServerApp.ip=127.0.0.1" in argv and "--ServerApp.port=8890" in argv
    assert "--gateway-url=http://127.0.0.1:9889" in argv and f"--ServerApp.root_dir={tmp_path}" in argv
    assert "--no-browser" in argv and "token" not in joined.lower()


def test_enable_script_reruns_the_bootstrap_with_the_gateway() -> None:
    from nbcloud.remote.spec import BootstrapSpec

    spec = BootstrapSpec(name="box", gateway=True, gateway_port=8889,
                         package_env={"NBCLOUD_FIND_LINKS": "/mnt/wheelhouse", "NBCLOUD_NO_INDEX": "1"})
    script, stdin = enable_script(spec)
    bootstrap = stdin.decode()
    assert "jupyter-kernel-gateway==3.0.1" in bootstrap and "nbcloud-gateway.service" in bootstrap
    assert "KG_AUTH_TOKEN" in bootstrap and "NBCLOUD_FIND_LINKS=/mnt/wheelhouse" in bootstrap
    assert "systemctl restart nbcloud-gateway.service" in script and "${NBCLOUD_JUPYTER_IP:-127.0.0.1}:8889" in script
    bash = shutil.which("bash")
    assert bash is not None
    assert subprocess.run([bash, "-n", "-c", script], capture_output=True).returncode == 0
    with pytest.raises(ValueError):
        enable_script(BootstrapSpec(name="box"))


class _Fake(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, object]]] = {}

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, {"reason": "Not Found"}))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def fake() -> Iterator[tuple[str, dict[str, tuple[int, object]]]]:
    routes: ClassVar[dict[str, tuple[int, object]]] = {}
    handler = type("Handler", (_Fake,), {"routes": routes})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def test_a_plain_web_server_is_not_a_gateway(fake: tuple[str, dict[str, tuple[int, object]]]) -> None:
    url, _routes = fake
    with pytest.raises(UsageError, match=r"no Kernel Gateway answers.*jupyter-kernel-gateway 3\.0\.x") as info:
        check_gateway(url, "t", wait=0, name="box")
    assert "`nbcloud gateway box`" in info.value.hint


def test_an_old_gateway_is_a_version_mismatch(fake: tuple[str, dict[str, tuple[int, object]]]) -> None:
    pytest.importorskip("jupyter_server")
    url, routes = fake
    routes["/api"] = (200, {"version": "6.5.4"})
    with pytest.raises(UsageError, match="version mismatch"):
        check_gateway(url, "t", wait=0)


def test_a_wrong_token_is_named(fake: tuple[str, dict[str, tuple[int, object]]]) -> None:
    url, routes = fake
    routes["/api"] = (403, {"reason": "Forbidden"})
    with pytest.raises(UsageError, match="refused nbcloud's token"):
        check_gateway(url, "t", wait=0)


def test_gateway_listing(fake: tuple[str, dict[str, tuple[int, object]]]) -> None:
    pytest.importorskip("jupyter_server")
    url, routes = fake
    routes["/api"] = (200, {"version": "2.21.1"})
    routes["/api/kernelspecs"] = (200, {"default": "python3", "kernelspecs": {"python3": {}, "ir": {}}})
    info = check_gateway(url + "/", "t", wait=0)
    assert info.kernelspecs == ("ir", "python3") and info.default_kernel == "python3" and info.url == url


def test_lab_needs_gateway_mode(nbcloud_home: Path) -> None:
    ctx = Context.create()
    ctx.store.put(Record(name="plain", provider="sandbox", region="us-east-1", spec={"gateway": False}))
    with pytest.raises(UsageError, match="not in gateway mode") as info:
        lab(ctx, "plain", open_browser=False)
    assert info.value.hint == "turn it on with `nbcloud gateway plain`"


class _NoJupyterLab:
    """An import finder that makes jupyterlab look uninstalled (Python's import machinery, not our code)."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] == "jupyterlab":
            raise ModuleNotFoundError(name)
        return None


def test_lab_without_jupyterlab_says_how_to_install(nbcloud_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Context.create()
    ctx.store.put(Record(name="gw", provider="sandbox", region="us-east-1", spec={"gateway": True}))
    for module in [m for m in sys.modules if m.split(".")[0] == "jupyterlab"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_NoJupyterLab(), *sys.meta_path])
    with pytest.raises(UsageError, match="JupyterLab is not installed") as info:
        lab(ctx, "gw", open_browser=False)
    assert info.value.hint == "pip install 'nbcloud[lab]'"


def test_jupyter_command_for_your_own_jupyterlab(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nbcloud gateway NAME` prints a command line whose token reaches JupyterLab's gateway client by env."""
    import shlex

    from nbcloud.ops import gateway as gw

    token = "t0k-en_with'quote"
    line = gw.jupyter_command("http://127.0.0.1:9999", token)
    words = shlex.split(line)
    assignment, program = words[0], words[1:]
    var, _, value = assignment.partition("=")
    assert program == ["jupyter", "lab", "--gateway-url=http://127.0.0.1:9999"] and value == token
    assert token not in " ".join(program)  # not an argument: `ps` would show it
    from jupyter_server.gateway.gateway_client import GatewayClient

    monkeypatch.setenv(var, value)
    assert GatewayClient().auth_token == token
