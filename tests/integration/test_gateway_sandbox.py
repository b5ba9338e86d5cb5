"""Gateway mode on the sandbox: `up --mode gateway`, `nbcloud gateway`, `nbcloud lab`; kernels on the instance,
surviving a 20 s link cut. Sandbox instances have their own UTS namespace, so the hostname tells them apart."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from tests.integration.test_gateway_local import _execute, _token, http

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(600)]
CUT_S = float(os.environ.get("NBCLOUD_TEST_CUT_SECONDS", "10"))  # 60 in a manual run


def _status(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _print_logs(world, lab_log: Path) -> None:
    """On a failure: the local lab's, the tunnel's and the gateway's logs (pytest shows captured stdout)."""
    for title, path in (("local lab", lab_log), ("tunnel", world.home / "tunnels" / "gwbox.log")):
        text = path.read_text(errors="replace").splitlines()[-40:] if path.exists() else ["(none)"]
        print(f"--- {title} log {path}", *text, sep="\n")
    gateway = world.nb("logs", "gwbox", "--gateway", "-n", "60", check=False)
    print("--- gateway log on the instance", gateway.stdout, gateway.stderr, sep="\n")


def _cell_through_cut(world, lab, kernel_id: str, instance_id: str, cut_s: float) -> tuple[list[str], list[str],
                                                                                       bool]:
    """Run the 20-line cell through the local lab's kernel websocket; cut the link for ``cut_s`` after line 2.
    Returns (the printed lines, every message id seen, whether the websocket was still open at the end)."""
    import websocket
    from jupyter_client.jsonutil import json_default
    from jupyter_client.session import Session

    from nbcloud.sandbox import client as sandbox

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{lab.local_port}/api/kernels/{kernel_id}/channels?session_id={uuid.uuid4().hex}",
        header=[f"Authorization: token {_token(lab)}"], timeout=cut_s + 90)
    msg = Session().msg("execute_request", content={
        "code": "import time\nfor i in range(20):\n    print(i, flush=True)\n    time.sleep(1)", "silent": False,
        "store_history": False, "user_expressions": {}, "allow_stdin": False})
    msg["channel"] = "shell"
    ws.send(json.dumps(msg, default=json_default))
    text, ids, cut = "", [], None

    def cut_link() -> None:
        sandbox.fault(instance_id, "link-down", sandbox_dir=world.sandbox.sandbox_dir)
        time.sleep(cut_s)
        sandbox.fault(instance_id, "link-up", sandbox_dir=world.sandbox.sandbox_dir)

    deadline = time.monotonic() + 20 + cut_s + 90
    try:
        while time.monotonic() < deadline:
            reply = json.loads(ws.recv())
            ids.append(reply["header"]["msg_id"])
            if reply.get("parent_header", {}).get("msg_id") != msg["header"]["msg_id"]:
                continue
            if reply["msg_type"] == "stream":
                text += reply["content"]["text"]
                if cut is None and len(text.split()) >= 3:
                    cut = threading.Thread(target=cut_link)
                    cut.start()
            elif reply["msg_type"] == "status" and reply["content"]["execution_state"] == "idle":
                break
        return text.split(), ids, ws.connected
    finally:
        if cut is not None:
            cut.join(cut_s + 30)
        ws.close()


def test_lab_with_kernels_on_the_instance(world, tmp_path: Path) -> None:
    from nbcloud.ops.gateway import LabResult

    t0 = time.monotonic()

    def mark(what: str) -> None:
        print(f"{time.monotonic() - t0:6.1f} s  {what}", flush=True)

    up = world.up("gwbox", "--mode", "gateway")
    assert up["vscode"] == "code --remote ssh-remote+nb-gwbox /home/ubuntu"  # the editor hint `up` prints
    # `nbcloud gateway` installs a fresh gateway token (and is what turns gateway mode on for any instance)
    mark("up")
    enabled = world.nb_json("gateway", "gwbox")
    assert "python3" in enabled["kernelspecs"] and enabled["server_version"].startswith("2.")
    # scripts and your own `jupyter lab --gateway-url=…` get the token from `gateway --json`
    gateway_token = (world.home / "secrets" / "gwbox.gateway-token").read_text().strip()
    assert enabled["gateway_token"] == gateway_token and enabled["gateway_url"].startswith("http://127.0.0.1:")
    assert enabled["jupyter_command"].endswith(f"jupyter lab --gateway-url={enabled['gateway_url']}")
    root = tmp_path / "notebooks"
    root.mkdir()
    try:
        mark("gateway")
        started = world.nb_json("lab", "gwbox", str(root), "--no-browser")
        assert started["root_dir"] == str(root) and started["gateway_url"] == enabled["gateway_url"]

        mark("lab")
        token = (world.home / "secrets" / "gwbox.gateway-token").read_text().strip()
        assert _status(f"{started['gateway_url']}/api/kernelspecs", token) == 200
        assert _status(f"{started['gateway_url']}/api/kernelspecs", None) in (401, 403)  # KG 3.0.1 answers 401

        again = world.nb_json("lab", "gwbox", str(root), "--no-browser")
        assert again["reused"] and again["pid"] == started["pid"]

        fields = LabResult.__dataclass_fields__
        lab = LabResult(**{k: v for k, v in started.items() if k in fields})
        base = f"http://127.0.0.1:{lab.local_port}"
        status, kernel = http("POST", f"{base}/api/kernels", _token(lab), {"name": "python3"})
        assert status == 201 and isinstance(kernel, dict)
        instance_hostname = world.ssh("nb-gwbox", "hostname").stdout.strip()
        probe = "import os, socket; (socket.gethostname(), os.path.exists('/opt/nbcloud/venv'))"
        mark("kernel started")
        seen = _execute(lab, kernel["id"], probe)
        assert seen == repr((instance_hostname, True))

        mark("kernel on the instance")
        _execute(lab, kernel["id"], "survivor = 'still here'; survivor")
        # The local lab's websocket to the gateway rides the resumable tunnel: a cell printing through a cut
        # loses no line and repeats none (issue 13), and the browser-side websocket never closes.
        lines, seen_ids, still_open = _cell_through_cut(world, lab, kernel["id"], up["instance_id"], CUT_S)
        mark(f"20-line cell through a {CUT_S:.0f} s cut")
        assert lines == [str(i) for i in range(20)], "every line exactly once, in order"
        assert len(seen_ids) == len(set(seen_ids)) and still_open
        world.nb("sandbox", "fault", up["instance_id"], "link-down")
        time.sleep(20)
        world.nb("sandbox", "fault", up["instance_id"], "link-up")
        deadline = time.monotonic() + 60
        while True:  # the tunnel re-attaches within seconds; the kernel never left the instance
            try:
                assert _execute(lab, kernel["id"], "survivor", timeout=10) == "'still here'"
                break
            except Exception:
                if time.monotonic() > deadline:
                    _print_logs(world, Path(lab.log_file))
                    raise
                time.sleep(1)

        mark("survived the cut")
        gateway_log = world.nb("logs", "gwbox", "--gateway", "-n", "1000").stdout
        assert f"Kernel started: {kernel['id']}" in gateway_log and token not in gateway_log, gateway_log[-2000:]
        status, _ = http("PUT", f"{base}/api/contents/kept.ipynb", _token(lab), {
            "type": "notebook", "format": "json",
            "content": {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}})
        assert status in (200, 201) and json.loads((root / "kept.ipynb").read_text())["nbformat"] == 4
    finally:
        world.nb("lab", "gwbox", "--stop", check=False)
