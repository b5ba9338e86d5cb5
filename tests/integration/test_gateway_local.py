"""Gateway mode without a cloud: a real Kernel Gateway on 127.0.0.1 (the "remote side") and the local JupyterLab
that `nbcloud lab` starts, pointed at it. Driven through the local server's REST API and kernel websocket."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("kernel_gateway")
pytest.importorskip("jupyterlab")
websocket = pytest.importorskip("websocket")

from nbcloud.errors import ConflictError, UsageError  # noqa: E402
from nbcloud.ops.gateway import (  # noqa: E402
    LabResult,
    check_gateway,
    read_lab_state,
    start_local_lab,
    stop_local_lab,
)

pytestmark = pytest.mark.timeout(180)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, token: str | None = None, body: object = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, None


@dataclass
class Gateway:
    url: str
    token: str
    workdir: Path
    proc: subprocess.Popen[bytes]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("remote-side")
    port, token = free_port(), uuid.uuid4().hex
    log = open(workdir.parent / "gateway.log", "wb")  # noqa: SIM115 - closed in the finalizer
    env = dict(os.environ, KG_AUTH_TOKEN=token)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel_gateway", "--ip=127.0.0.1", f"--port={port}", "--port_retries=0",
         "--JupyterWebsocketPersonality.list_kernels=True"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (workdir.parent / "gateway.log").read_text()
            with contextlib.suppress(OSError):
                if http("GET", f"{url}/api", token)[0] == 200:
                    break
            assert time.monotonic() < deadline, "the kernel gateway did not start"
            time.sleep(0.2)
        yield Gateway(url, token, workdir, proc)
    finally:
        _kill_group(proc)
        log.close()


@pytest.fixture(scope="module")
def local_lab(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabResult, Path]]:
    state_dir = tmp_path_factory.mktemp("nbhome") / "lab"
    root = tmp_path_factory.mktemp("laptop-notebooks")
    state_file = state_dir / "gw.json"
    result = None
    try:
        result = start_local_lab(state_file=state_file, log_file=state_dir / "gw.log", root_dir=root,
                                 gateway_url=gateway.url, gateway_token=gateway.token, port=free_port(), name="gw")
        yield result, state_file
    finally:
        stop_local_lab(state_file)
        if result is not None:  # belt and braces: never leave a server behind, even if stop failed
            with contextlib.suppress(ProcessLookupError):
                os.killpg(result.pid, signal.SIGKILL)


def _token(result: LabResult) -> str:
    return result.url.split("token=", 1)[1]


def test_gateway_token_required(gateway: Gateway) -> None:
    assert http("GET", f"{gateway.url}/api/kernelspecs", gateway.token)[0] == 200
    assert http("GET", f"{gateway.url}/api/kernelspecs")[0] in (401, 403)
    assert http("GET", f"{gateway.url}/api/kernelspecs", "wrong")[0] in (401, 403)


def test_check_gateway(gateway: Gateway) -> None:
    info = check_gateway(gateway.url, gateway.token, wait=1)
    assert info.server_version.startswith("2.")
    assert "python3" in info.kernelspecs
    with pytest.raises(UsageError, match="refused nbcloud's token"):
        check_gateway(gateway.url, "wrong", wait=1)
    with pytest.raises(UsageError, match=r"no Kernel Gateway answers.*3\.0\.x"):
        check_gateway(f"http://127.0.0.1:{free_port()}", gateway.token, wait=0.5)


def test_lab_state_and_secrets(local_lab: tuple[LabResult, Path], gateway: Gateway) -> None:
    result, state_file = local_lab
    assert oct(state_file.stat().st_mode & 0o777) == "0o600"
    state = read_lab_state(state_file)
    assert state is not None and state["pid"] == result.pid and state["port"] == result.local_port
    cmdline = Path(f"/proc/{result.pid}/cmdline").read_bytes().decode()
    assert gateway.token not in cmdline and _token(result) not in cmdline
    assert f"--gateway-url={gateway.url}" in cmdline
    assert os.getsid(result.pid) == result.pid  # detached: its own session


def test_kernelspecs_come_from_the_gateway(local_lab: tuple[LabResult, Path]) -> None:
    result, _ = local_lab
    base = f"http://127.0.0.1:{result.local_port}"
    assert http("GET", f"{base}/api/status")[0] in (401, 403)
    status, specs = http("GET", f"{base}/api/kernelspecs", _token(result))
    assert status == 200 and isinstance(specs, dict)
    assert "python3" in specs["kernelspecs"]


def _execute(result: LabResult, kernel_id: str, code: str, timeout: float = 60) -> str:
    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{result.local_port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
        header=[f"Authorization: token {_token(result)}"], timeout=timeout)
    try:
        msg = Session().msg("execute_request", content={"code": code, "silent": False, "store_history": False,
                                                        "user_expressions": {}, "allow_stdin": False})
        msg["channel"] = "shell"
        ws.send(json.dumps(msg, default=json_default))
        deadline = time.monotonic() + timeout
        value, replied, idle = None, False, False
        # shell (execute_reply) and iopub (result, idle) are separate channels: wait for both ends
        while time.monotonic() < deadline and not (replied and idle):
            reply = json.loads(ws.recv())
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            kind = reply["msg_type"]
            if kind == "execute_result":
                value = reply["content"]["data"]["text/plain"]
            elif kind == "error":
                raise AssertionError(reply["content"])
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and reply["content"]["execution_state"] == "idle":
                idle = True
        assert replied and idle and value is not None, f"no complete reply within {timeout:g} s"
        return value
    finally:
        ws.close()


def test_kernel_runs_behind_the_gateway_and_notebooks_stay_local(local_lab: tuple[LabResult, Path],
                                                                  gateway: Gateway) -> None:
    result, _ = local_lab
    base, token = f"http://127.0.0.1:{result.local_port}", _token(result)
    status, kernel = http("POST", f"{base}/api/kernels", token, {"name": "python3"})
    assert status == 201 and isinstance(kernel, dict)
    try:
        # the gateway lists the same kernel: it runs there, not in the local server
        status, remote_kernels = http("GET", f"{gateway.url}/api/kernels", gateway.token)
        assert status == 200 and kernel["id"] in [k["id"] for k in remote_kernels]  # type: ignore[union-attr]
        cwd = _execute(result, kernel["id"], "import os; os.getcwd()")
        assert cwd.strip("'\"") == str(gateway.workdir)
        assert _execute(result, kernel["id"], "x = 41; x + 1") == "42"
    finally:
        assert http("DELETE", f"{base}/api/kernels/{kernel['id']}", token)[0] == 204

    notebook = {"type": "notebook", "format": "json", "content": {
        "cells": [{"cell_type": "code", "source": "import os; os.getcwd()", "metadata": {}, "outputs": [],
                   "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    status, _ = http("PUT", f"{base}/api/contents/analysis.ipynb", token, notebook)
    assert status in (200, 201)
    saved = Path(result.root_dir) / "analysis.ipynb"
    assert saved.exists()
    assert "".join(json.loads(saved.read_text())["cells"][0]["source"]) == "import os; os.getcwd()"
    assert not (gateway.workdir / "analysis.ipynb").exists()


def _ask(ws: websocket.WebSocket, session_id: str, msg_type: str, content: dict[str, object],
         wanted: str, timeout: float = 30) -> dict[str, object] | None:
    """Send one shell request on an open kernel websocket; the content of its `wanted` reply, None if none came."""
    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    msg = Session(session=session_id).msg(msg_type, content=content)
    msg["channel"] = "shell"
    ws.send(json.dumps(msg, default=json_default))
    ws.settimeout(1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(websocket.WebSocketTimeoutException):
            reply = json.loads(ws.recv())
            if reply.get("parent_header", {}).get("msg_id") == msg["header"]["msg_id"] and \
                    reply["msg_type"] == wanted:
                return dict(reply["content"])
    return None


def _gateway_connections(gateway: Gateway, kernel_id: str, expect: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        status, model = http("GET", f"{gateway.url}/api/kernels/{kernel_id}", gateway.token)
        assert status == 200 and isinstance(model, dict)
        if model["connections"] == expect or time.monotonic() > deadline:
            return int(model["connections"])
        time.sleep(0.2)


def test_a_websocket_closed_mid_handshake_leaves_no_upstream_connection(local_lab: tuple[LabResult, Path],
                                                                        gateway: Gateway) -> None:
    """What JupyterLab does when it opens a new notebook: connect, close at once, connect again, same session.

    Stock jupyter_server leaves the first upstream websocket open on the gateway under the same session id (its
    cancel does not stop tornado's handshake). The gateway then handles two connections of one session; now and then
    the live one never sees its kernel_info_reply, or its first execute_request is lost.
    """
    result, _ = local_lab
    base, token = f"http://127.0.0.1:{result.local_port}", _token(result)
    for attempt in range(4):
        status, kernel = http("POST", f"{base}/api/kernels", token, {"name": "python3"})
        assert status == 201 and isinstance(kernel, dict)
        session_id = uuid.uuid4().hex
        url = f"ws://127.0.0.1:{result.local_port}/api/kernels/{kernel['id']}/channels?session_id={session_id}"
        try:
            websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=30).close()
            live = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=30)
            try:
                assert _ask(live, session_id, "kernel_info_request", {}, "kernel_info_reply") is not None, attempt
                executed = _ask(live, session_id, "execute_request",
                                {"code": "6*7", "silent": False, "store_history": True, "user_expressions": {},
                                 "allow_stdin": False}, "execute_result")
                assert executed is not None and executed["data"] == {"text/plain": "42"}, (attempt, executed)
                # the gateway's own count: the one live websocket, no orphan beside it
                assert _gateway_connections(gateway, kernel["id"], expect=1) == 1, attempt
            finally:
                live.close()
            assert _gateway_connections(gateway, kernel["id"], expect=0) == 0, attempt
        finally:
            http("DELETE", f"{base}/api/kernels/{kernel['id']}", token)


def test_lab_is_idempotent_and_refuses_another_root(local_lab: tuple[LabResult, Path], gateway: Gateway,
                                                     tmp_path: Path) -> None:
    result, state_file = local_lab
    again = start_local_lab(state_file=state_file, log_file=state_file.with_suffix(".log"),
                            root_dir=Path(result.root_dir), gateway_url=gateway.url, gateway_token=gateway.token)
    assert again.reused and again.pid == result.pid and again.url == result.url
    with pytest.raises(ConflictError, match="already runs in"):
        start_local_lab(state_file=state_file, log_file=state_file.with_suffix(".log"), root_dir=tmp_path,
                        gateway_url=gateway.url, gateway_token=gateway.token)


def test_stop_then_start_fresh(gateway: Gateway, tmp_path: Path) -> None:
    state_file = tmp_path / "lab" / "other.json"
    first = start_local_lab(state_file=state_file, log_file=tmp_path / "lab" / "other.log", root_dir=tmp_path,
                            gateway_url=gateway.url, gateway_token=gateway.token, port=free_port())
    try:
        assert http("GET", f"http://127.0.0.1:{first.local_port}/api/status", _token(first))[0] == 200
    finally:
        stopped = stop_local_lab(state_file)
    assert stopped == {"stopped": True, "pid": first.pid}
    assert read_lab_state(state_file) is None and not state_file.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)
    assert stop_local_lab(state_file) == {"stopped": False, "pid": None}


def test_local_lab_that_cannot_start_is_reported(gateway: Gateway, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"local port {port} is in use"):
            start_local_lab(state_file=tmp_path / "x.json", log_file=tmp_path / "x.log", root_dir=tmp_path,
                            gateway_url=gateway.url, gateway_token=gateway.token, port=port)
