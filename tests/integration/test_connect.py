"""Issue 6 on the sandbox: `connect` through the self-healing tunnel, across link cuts and stop/start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import wait_until

pytestmark = [pytest.mark.sandbox]


def get(url: str, token: str, timeout: float = 10) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def post(url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), method="POST",
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


class Kernel:
    """A real Jupyter kernel websocket client (the protocol JupyterLab speaks), through the tunnel's port."""

    def __init__(self, port: int, token: str, kernel_id: str) -> None:
        self.port, self.token, self.kernel_id = port, token, kernel_id
        self.ws = None

    def open(self) -> None:
        import websocket

        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{self.kernel_id}/channels?token={self.token}", timeout=60)

    def send(self, code: str) -> str:
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": uuid.uuid4().hex,
                       "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))
        return msg_id

    def result(self, msg_id: str, deadline: float = 90) -> str:
        out: list[str] = []
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "execute_result":
                out.append(content["data"]["text/plain"])
            elif kind == "error":
                raise AssertionError(content)
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out).strip()
        raise AssertionError("no result")

    def wait_busy(self, msg_id: str) -> None:
        """Until the kernel has started the cell: only then is a cut 'in the middle of a running cell'."""
        while True:
            msg = json.loads(self.ws.recv())
            if (msg.get("parent_header", {}).get("msg_id") == msg_id and msg["msg_type"] == "status"
                    and msg["content"]["execution_state"] == "busy"):
                return

    def run(self, code: str) -> str:
        return self.result(self.send(code))

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None


def wait_tunnel(world, name: str, wanted: str, timeout: float) -> dict[str, Any]:
    from nbcloud.ssh.tunnel import read_state

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = read_state(name)
        if state is not None and state.state == wanted:
            return {"state": state.state, "since": state.since}
        time.sleep(0.1)
    raise AssertionError(f"tunnel of {name} never became {wanted}: {read_state(name)}")


def link(world, instance_id: str, kind: str) -> None:
    from nbcloud.sandbox import client as sandbox

    sandbox.fault(instance_id, kind, sandbox_dir=world.sandbox.sandbox_dir)


def test_tunnel_heals_after_20s_cut_idle_and_mid_cell(world) -> None:
    up = world.up("tun", "--idle-stop", "off")
    conn = world.nb_json("connect", "tun", "--no-browser")
    port, token = conn["local_port"], conn["url"].split("token=")[1]
    assert conn["tunnel"] == "up" and conn["url"].startswith(f"http://127.0.0.1:{port}/lab?token=")
    kernel = post(f"http://127.0.0.1:{port}/api/kernels", token)
    k = Kernel(port, token, kernel["id"])
    k.open()
    assert k.run("x = 41\nx + 1") == "42"

    # 1. A cut while idle.
    link(world, up["instance_id"], "link-down")
    wait_tunnel(world, "tun", "reconnecting", timeout=30)
    assert world.nb_json("status", "tun")["tunnel"] == "reconnecting"
    time.sleep(20)
    link(world, up["instance_id"], "link-up")
    wait_tunnel(world, "tun", "up", timeout=30)
    assert get(f"http://127.0.0.1:{port}/api/status", token)["kernels"] == 1

    # 2. A cut in the middle of a running cell: the kernel keeps running and keeps its state.
    k.close()
    k.open()
    k.wait_busy(k.send("import time\ntime.sleep(25)\nx += 1"))
    k.close()
    link(world, up["instance_id"], "link-down")
    wait_tunnel(world, "tun", "reconnecting", timeout=30)
    time.sleep(20)
    link(world, up["instance_id"], "link-up")
    wait_tunnel(world, "tun", "up", timeout=30)
    kernels = get(f"http://127.0.0.1:{port}/api/kernels", token)
    assert [kk["id"] for kk in kernels] == [kernel["id"]], "the kernel survived"
    k.open()
    # The kernel kept its state through the cut (the variable set before it is there) and still runs cells.
    # Whether the cell that was running when its websocket closed completes is ipykernel's business: seen
    # here, ipykernel 7 sometimes drops it silently (noted in the issue), so only survival is asserted.
    assert k.run("x") in {"42", "43"}
    assert k.run("x * 0 + 7") == "7"
    k.close()


def test_connect_after_stop_start_and_bad_input(world) -> None:
    hop = world.up("hop", "--idle-stop", "off")
    first = world.nb_json("connect", "hop", "--no-browser")
    world.nb("stop", "hop")
    stopped = world.nb("connect", "hop", "--no-browser", check=False)
    assert stopped.returncode == 2 and "nbcloud start hop" in stopped.stderr
    world.nb("start", "hop")
    again = world.nb_json("connect", "hop", "--no-browser")
    assert again["local_port"] == first["local_port"], "the local port is remembered per instance"
    token = again["url"].split("token=")[1]
    assert get(f"http://127.0.0.1:{again['local_port']}/api/status", token)["started"]

    unknown = world.nb("connect", "nosuch", "--no-browser", check=False)
    assert unknown.returncode == 2 and "no instance named 'nosuch'" in unknown.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        world.nb("disconnect", "hop")
        clash = world.nb("connect", "hop", "--no-browser", "--port", str(taken), check=False)
    assert clash.returncode == 2 and f"port {taken} is in use" in clash.stderr
    assert len(clash.stderr.strip().splitlines()) == 1

    # Ctrl-C while connect waits for its tunnel (the link is cut, so it cannot come up): the tunnel it started
    # is stopped, not left running unannounced
    from nbcloud.ssh.tunnel import read_state

    link(world, hop["instance_id"], "link-down")
    try:
        waiting = subprocess.Popen([sys.executable, "-m", "nbcloud.cli.app", "connect", "hop", "--no-browser"],
                                   env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        starting = wait_until(lambda: (s := read_state("hop")) is not None and s.state != "down" and s.pid and s,
                              timeout=30, what="the tunnel supervisor started by connect")
        time.sleep(1)
        os.killpg(waiting.pid, signal.SIGINT)
        out, errors = waiting.communicate(timeout=30)
    finally:
        link(world, hop["instance_id"], "link-up")
    assert waiting.returncode == 130, (out, errors)
    assert errors.strip().splitlines() == [
        "error: interrupted — stopped the tunnel to hop that this connect had started — `nbcloud connect hop` to "
        "try again"], errors
    assert not Path(f"/proc/{starting.pid}").exists() or "nbcloud.ssh.tunnel" not in Path(
        f"/proc/{starting.pid}/cmdline").read_bytes().decode(errors="replace"), "the supervisor still runs"
    assert world.nb_json("status", "hop")["tunnel"] == "down"
