"""Issue 5's acceptance on the sandbox: Jupyter as a service behind SSH, its recovery, durable outputs, public mode.

One instance (a plain `up`: durable outputs are the default) is shared by the SSH-mode tests, which run in file
order (REST and kernel → server-side execution across a dropped tunnel → Jupyter killed → reboot → no secret in ps
or logs); one
``--public`` instance serves the public-mode test. Everything goes through the real CLI, OpenSSH and Jupyter.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.helpers import World, world_env

pytestmark = [pytest.mark.sandbox]

NAME = "jsvc"
PUBLIC = "jspub"
PASSWORD = "correct horse battery"
SLOW_CELL = "import time\nfor i in range(10):\n    print('tick', i, flush=True)\n    time.sleep(2)\nprint('done')"


@pytest.fixture(scope="module")
def nb(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A private nbcloud (own NBCLOUD_HOME and ~/.ssh/config) on the session's sandbox, shared by this module."""
    root = tmp_path_factory.mktemp("jsvc")
    world = World.under(root, sandbox)
    with pytest.MonkeyPatch.context() as mp:  # for in-process calls (nbcloud.ops.public)
        for key, value in world_env(root, sandbox).items():
            mp.setenv(key, value)
        try:
            yield world
        finally:
            world.down_all()


@dataclass
class Lab:
    """The shared instance as a client sees it: the tunnel's local port and the token."""

    name: str
    instance_id: str
    host: str
    port: int
    token: str

    def request(self, method: str, path: str, body: Any = None, token: str | None = "default",
                timeout: float = 30) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"token {self.token if token == 'default' else token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def wait_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                status, _ = self.request("GET", "/api/status", timeout=5)
                if status == 200:
                    return
                last = status
            except OSError as exc:
                last = exc
            time.sleep(0.5)
        raise AssertionError(f"Jupyter did not answer through the tunnel within {timeout} s: {last}")


@pytest.fixture(scope="module")
def lab(nb: World) -> Lab:
    up = nb.up(NAME)  # the default: server-side execution (durable outputs)
    # An ephemeral port: other programs on this host (parallel runs) take 8888, 8889, … while we are disconnected.
    connected = nb.nb_json("connect", NAME, "--no-browser", "--port", str(_free_port()))
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(connected["url"]).query)["token"][0]
    assert connected["url"].startswith(f"http://127.0.0.1:{connected['local_port']}/lab?token=")
    result = Lab(NAME, up["instance_id"], up["host"], connected["local_port"], token)
    result.wait_up(60)
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _execute_over_websocket(lab: Lab, kernel_id: str, code: str, timeout: float = 60) -> str:
    """The Jupyter kernel websocket protocol (JSON messages) with jupyter_client's Session making the messages."""
    import websocket
    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    session = Session()  # the server re-signs with its own key; this one is not checked
    ws = websocket.create_connection(f"ws://127.0.0.1:{lab.port}/api/kernels/{kernel_id}/channels"
                                     f"?session_id={session.session}", header=[f"Authorization: token {lab.token}"],
                                     timeout=timeout)
    try:
        msg = session.msg("execute_request", {"code": code, "silent": False, "store_history": True,
                                              "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
        msg["channel"] = "shell"
        ws.send(json.dumps(msg, default=json_default))
        result, idle, deadline = None, False, time.monotonic() + timeout
        while not (result is not None and idle) and time.monotonic() < deadline:
            reply = json.loads(ws.recv())
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            kind = reply["msg_type"]
            if kind == "execute_result":
                result = reply["content"]["data"]["text/plain"]
            elif kind == "error":
                raise AssertionError(f"the cell failed: {reply['content']['ename']}: {reply['content']['evalue']}")
            elif kind == "status" and reply["content"]["execution_state"] == "idle":
                idle = True
        assert result is not None, "no execute_result within the timeout"
        return str(result)
    finally:
        ws.close()


def _jupyter_pid(nb: World) -> int:
    """The pid listening on 8888 as the instance's own `ss` shows it (pids are shared with the host: never by name)."""
    out = nb.ssh_out(NAME, "sudo ss -ltnpH 'sport = :8888'")
    marker = "pid="
    assert marker in out, f"nothing listens on 8888: {out!r}"
    return int(out.split(marker, 1)[1].split(",", 1)[0])


def test_rest_kernel_contents_and_access(nb: World, lab: Lab) -> None:
    status, body = lab.request("GET", "/api/status")
    assert status == 200 and "started" in body
    assert lab.request("GET", "/api/kernels", token=None)[0] == 403
    assert lab.request("GET", "/api/kernels", token="not-the-token")[0] == 403

    status, kernel = lab.request("POST", "/api/kernels", {"name": "python3"})
    assert status == 201
    assert _execute_over_websocket(lab, kernel["id"], "1+1") == "2"
    assert lab.request("DELETE", f"/api/kernels/{kernel['id']}")[0] == 204

    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [{"id": "one", "cell_type": "code", "metadata": {}, "execution_count": None,
                           "outputs": [], "source": "1+1"}]}
    status, saved = lab.request("PUT", "/api/contents/data/acceptance.ipynb",
                                {"type": "notebook", "format": "json", "content": notebook})
    assert status == 201 and saved["path"] == "data/acceptance.ipynb"
    assert "acceptance.ipynb" in nb.ssh_out(NAME, "ls ~/data").split()

    # JupyterLab's news feed is off for every user of the venv: no popup, no outbound request.
    status, setting = lab.request("GET", "/lab/api/settings/@jupyterlab/apputils-extension:notification")
    assert status == 200 and setting["schema"]["properties"]["fetchNews"]["default"] == "false", setting.get("schema")

    # From outside the instance (this host, straight to its address) the Jupyter port does not answer.
    with pytest.raises(OSError):
        socket.create_connection((lab.host, 8888), timeout=3).close()


def test_kernel_keeps_running_and_outputs_land_in_the_file_across_a_dropped_tunnel(nb: World, lab: Lab) -> None:
    """Durable outputs (`up`'s default): a real collaborative client opens the notebook, nbmodel runs the cell on
    the server, and the output written while no client is attached is in the document after a reconnect."""
    import websocket

    path = "data/durable.ipynb"
    notebook = {"nbformat": 4, "nbformat_minor": 5,
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "cells": [{"id": "slow", "cell_type": "code", "metadata": {}, "execution_count": None,
                           "outputs": [], "source": SLOW_CELL}]}
    assert lab.request("PUT", f"/api/contents/{path}", {"type": "notebook", "format": "json", "content": notebook})[0] \
        == 201
    # What JupyterLab does to open a notebook collaboratively: a session for the document, then its Yjs room.
    status, doc = lab.request("PUT", f"/api/collaboration/session/{path}", {"format": "json", "type": "notebook"})
    assert status == 201
    room = f"json:notebook:{doc['fileId']}"
    ws = websocket.create_connection(f"ws://127.0.0.1:{lab.port}/api/collaboration/room/{room}"
                                     f"?sessionId={doc['sessionId']}", header=[f"Authorization: token {lab.token}"],
                                     timeout=30)
    try:
        assert ws.recv()  # the server's first sync message: the room holds the document
        status, kernel_session = lab.request("POST", "/api/sessions", {"path": path, "type": "notebook",
                                                                       "name": "durable.ipynb",
                                                                       "kernel": {"name": "python3"}})
        assert status == 201
        kernel_id = kernel_session["kernel"]["id"]
        status, queued = lab.request("POST", f"/api/kernels/{kernel_id}/execute",
                                     {"code": SLOW_CELL, "metadata": {"document_id": room, "cell_id": "slow"}})
        assert status == 202
        deadline = time.monotonic() + 30
        while lab.request("GET", f"/api/kernels/{kernel_id}")[1]["execution_state"] != "busy":
            assert time.monotonic() < deadline, "the cell never started"
            time.sleep(0.2)
    finally:
        ws.close()

    # Drop the SSH connection mid-cell: nothing of the client is attached any more.
    nb.nb_json("disconnect", NAME)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{lab.port}/api/status", timeout=3)
    time.sleep(24)  # the 20 s cell finishes while disconnected
    connected = nb.nb_json("connect", NAME, "--no-browser", "--port", str(lab.port))
    assert connected["local_port"] == lab.port
    lab.wait_up(60)

    assert lab.request("GET", f"/api/kernels/{kernel_id}")[0] == 200, "the kernel did not survive the dropped tunnel"
    status, request = lab.request("GET", queued["request_url"])
    assert status == 200 and request["status"] == "ok"
    deadline = time.monotonic() + 30
    while True:  # the room saves the document a moment after its last change
        cell = lab.request("GET", f"/api/contents/{path}")[1]["content"]["cells"][0]
        text = "".join(o.get("text", "") for o in cell["outputs"])
        if "done" in text or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert text == "".join(f"tick {i}\n" for i in range(10)) + "done\n"
    assert cell["execution_count"] == 1
    lab.request("DELETE", f"/api/sessions/{kernel_session['id']}")


def test_jupyter_killed_comes_back_with_the_same_token(nb: World, lab: Lab) -> None:
    before = _jupyter_pid(nb)
    nb.ssh_out(NAME, f"sudo kill -9 {before}")
    deadline = time.monotonic() + 120
    while True:
        try:
            after = _jupyter_pid(nb)
            if after != before:
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline, "Jupyter was not restarted"
        time.sleep(0.5)
    lab.wait_up(120)
    assert lab.request("GET", "/api/kernels")[0] == 200
    assert lab.request("GET", "/api/kernels", token=None)[0] == 403


def test_reboot_keeps_token_and_notebooks(nb: World, lab: Lab) -> None:
    from nbcloud.sandbox import client

    client.fault(lab.instance_id, "reboot", sandbox_dir=nb.sandbox.sandbox_dir)
    # The tunnel heals itself; `connect` again is what a user would type and must be harmless.
    deadline = time.monotonic() + 180
    while True:
        try:
            nb.nb_json("connect", NAME, "--no-browser", "--port", str(lab.port), timeout=120)
            lab.wait_up(30)
            break
        except AssertionError:
            assert time.monotonic() < deadline, "Jupyter did not come back after the reboot"
    assert lab.request("GET", "/api/kernels")[0] == 200
    status, listing = lab.request("GET", "/api/contents/data")
    assert status == 200 and {"acceptance.ipynb", "durable.ipynb"} <= {f["name"] for f in listing["content"]}
    assert "acceptance.ipynb" in nb.ssh_out(NAME, "ls ~/data").split()
    status, kernel = lab.request("POST", "/api/kernels", {"name": "python3"})
    assert status == 201 and _execute_over_websocket(lab, kernel["id"], "1+1") == "2"
    lab.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_no_secret_in_process_list_or_logs(nb: World, lab: Lab) -> None:
    token = nb.secret(NAME, "token")
    args = nb.ssh_out(NAME, "ps -eo args")
    assert "jupyter" in args and token not in args
    logs = nb.ssh_out(NAME, "sudo cat /var/log/nbcloud/*.log /var/log/nbcloud/*/*.log 2>/dev/null; true")
    assert "jupyter" in logs.lower() and token not in logs


def test_public_mode_tls_password_and_security_group(nb: World) -> None:
    from nbcloud.ops.public import fetch_verified

    password_file = nb.home.parent / "password"
    password_file.write_text(PASSWORD + "\n")
    up = nb.up(PUBLIC, "--public", "--password-file", str(password_file))
    host = up["host"]
    connected = nb.nb_json("connect", PUBLIC, "--no-browser")
    assert connected["url"] == f"https://{host}:8888/lab" and connected["tunnel"] == "none"

    # The certificate served is the one pinned locally (and kept as <secrets>/NAME.crt); the key is not kept.
    pinned = nb.pinned(PUBLIC)
    served = ssl.get_server_certificate((host, 8888), timeout=10)
    der = ssl.PEM_cert_to_DER_cert(served)
    assert hashlib.sha256(der).hexdigest() == pinned.replace(":", "").lower()
    assert ssl.PEM_cert_to_DER_cert((nb.home / "secrets" / f"{PUBLIC}.crt").read_text()) == der
    assert not list((nb.home / "secrets").glob(f"{PUBLIC}*.key"))
    assert fetch_verified(f"https://{host}:8888/api", pinned).status == 200
    from nbcloud.errors import RemoteError

    with pytest.raises(RemoteError, match="not the pinned one"):
        fetch_verified(f"https://{host}:8888/api", "00" * 32)

    # Plain HTTP gets no answer.
    import http.client

    plain = http.client.HTTPConnection(host, 8888, timeout=10)
    with pytest.raises((OSError, http.client.HTTPException)):
        plain.request("GET", "/api")
        plain.getresponse()
    plain.close()

    # The password logs in (302 and a login cookie); a wrong one does not; the API needs a login.
    assert fetch_verified(f"https://{host}:8888/api/kernels", pinned).status == 403
    form = fetch_verified(f"https://{host}:8888/login", pinned)
    xsrf = next(c for c in form.cookies if c.startswith("_xsrf=")).split(";", 1)[0].split("=", 1)[1]
    outcomes = {}
    for attempt in (PASSWORD, "wrong password"):
        body = urllib.parse.urlencode({"password": attempt, "_xsrf": xsrf}).encode()
        response = fetch_verified(f"https://{host}:8888/login?next=%2Flab", pinned, method="POST", body=body,
                                  headers={"Content-Type": "application/x-www-form-urlencoded",
                                           "Cookie": f"_xsrf={xsrf}"})
        outcomes[attempt] = response
    good, bad = outcomes[PASSWORD], outcomes["wrong password"]
    assert good.status == 302 and good.headers["location"] == "/lab"
    login_cookie = next(c for c in good.cookies if c.startswith("username-")).split(";", 1)[0]
    assert bad.status != 302 and not [c for c in bad.cookies if c.startswith("username-")]
    assert fetch_verified(f"https://{host}:8888/api/kernels", pinned, headers={"Cookie": login_cookie}).status == 200

    # The security group: 22 and 8888, each from the caller's /32 only.
    ec2 = nb.ec2()
    (group,) = ec2.describe_security_groups(Filters=[{"Name": "tag:nbcloud:name", "Values": [PUBLIC]}])[
        "SecurityGroups"]
    rules = {(r["FromPort"], r["ToPort"]): sorted(ip["CidrIp"] for ip in r["IpRanges"]) for r in group["IpPermissions"]}
    assert rules == {(22, 22): [f"{nb.sandbox.caller_ip}/32"], (8888, 8888): [f"{nb.sandbox.caller_ip}/32"]}

    # Neither the password nor its hash nor the TLS key shows in ps or the logs.
    record_hash = nb.ssh_out(PUBLIC, "cat ~/.config/nbcloud/password.hash").strip()
    key_line = nb.ssh_out(PUBLIC, "sed -n 2p ~/.config/nbcloud/jupyter.key").strip()
    assert record_hash.startswith("argon2:") and PASSWORD not in record_hash
    seen = nb.ssh_out(PUBLIC, "ps -eo args; sudo cat /var/log/nbcloud/*.log")
    for secret in (PASSWORD, record_hash, key_line, nb.secret(PUBLIC, "token")):
        assert secret not in seen

