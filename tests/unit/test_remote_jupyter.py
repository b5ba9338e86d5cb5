"""The rendered Jupyter config in a real jupyter_server on 127.0.0.1, and the agent reading that server."""

from __future__ import annotations

import http.cookiejar
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nbcloud.remote.agent import nbcloud_agent as agent
from nbcloud.remote.jupyter_config import render_jupyter_config
from nbcloud.remote.secrets import hash_password, make_tls_cert, new_token
from nbcloud.remote.spec import BootstrapSpec

pytest.importorskip("jupyter_server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    token: str
    home: Path
    proc: subprocess.Popen[bytes]
    context: ssl.SSLContext | None = None

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"token {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=5,
                                        context=self.context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""


def start_server(tmp: Path, spec: BootstrapSpec, files: dict[str, str] | None = None) -> Server:
    """Start jupyter_server with the rendered config, the instance's home and secrets mapped under ``tmp``."""
    home = tmp / "home"
    secrets = home / ".config" / "nbcloud"
    secrets.mkdir(parents=True)
    token = new_token()
    for name, text in (files or {}).items():
        (secrets / name).write_text(text)
    (secrets / "token").write_text(token)  # no newline, as install_secrets_script writes it
    config = render_jupyter_config(spec).replace(spec.home, str(home))
    (tmp / "jupyter_server_config.py").write_text(config)
    env = {**os.environ, "HOME": str(home), "JUPYTER_TOKEN_FILE": str(secrets / "token"),
           "JUPYTER_CONFIG_DIR": str(tmp / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    env.pop("JUPYTER_TOKEN", None)
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - the server writes to it after this returns
    proc = subprocess.Popen(
        # --allow-root only because the tests run as root; on the instance Jupyter runs as the login user
        [sys.executable, "-m", "jupyter_server", f"--config={tmp / 'jupyter_server_config.py'}", "--allow-root"],
        cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    scheme = "https" if spec.public else "http"
    context = None
    if spec.public:
        context = ssl.create_default_context(cafile=str(secrets / "jupyter.crt"))
        context.check_hostname = False
    server = Server(f"{scheme}://127.0.0.1:{spec.jupyter_port}", token, home, proc, context)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("jupyter exited:\n" + (tmp / "server.log").read_text()[-3000:])
        try:
            if server.get("/api")[0] == 200:
                return server
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("jupyter did not answer:\n" + (tmp / "server.log").read_text()[-3000:])


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    spec = BootstrapSpec(name="t", jupyter_port=free_port(), cull_idle_minutes=10)
    server = start_server(tmp_path_factory.mktemp("local"), spec)
    yield server
    stop_server(server)


def test_local_config_token_from_file(local: Server) -> None:
    assert local.get("/api/status")[0] == 403
    assert local.get("/api/status", token="wrong")[0] == 403
    code, body = local.get("/api/status?no_track_activity=1", token=local.token)
    assert code == 200 and set(json.loads(body)) >= {"connections", "kernels", "last_activity", "started"}
    # the token is in no process's command line
    assert local.token.encode() not in Path(f"/proc/{local.proc.pid}/cmdline").read_bytes()


def test_public_config_tls_and_password(tmp_path: Path) -> None:
    cert, key, _ = make_tls_cert("localhost", "127.0.0.1")
    spec = BootstrapSpec(name="t", jupyter_port=free_port(), public=True)
    files = {"jupyter.crt": cert, "jupyter.key": key, "password.hash": hash_password("s3cret-pw")}
    server = start_server(tmp_path, spec, files)
    try:
        assert server.get("/api/status")[0] == 403
        assert server.get("/api/status", token=server.token)[0] == 200
        # log in with the password the way a browser does: _xsrf cookie, then POST /login
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar),
                                             urllib.request.HTTPSHandler(context=server.context))
        opener.open(server.url + "/login", timeout=5).read()
        xsrf = next(c.value for c in jar if c.name == "_xsrf")
        for password, expect_ok in (("wrong", False), ("s3cret-pw", True)):
            body = urllib.parse.urlencode({"password": password, "_xsrf": xsrf}).encode()
            try:
                opener.open(server.url + "/login?next=%2Fapi%2Fstatus", data=body, timeout=5).read()
            except urllib.error.HTTPError as exc:
                assert not expect_ok and exc.code == 401
            logged_in = any(c.name.startswith("username-") for c in jar)
            assert logged_in == expect_ok
    finally:
        stop_server(server)


def agent_config(server: Server, tmp: Path, **over: object) -> agent.Config:
    values: dict[str, object] = dict(
        jupyter_url=server.url, token_file=str(server.home / ".config/nbcloud/token"),
        settings_file=str(tmp / "agent.json"), state_file=str(tmp / "state.json"),
        interruption_file=str(tmp / "interruption.json"), check_period=1, proc_net=[],
        shutdown=["touch", str(tmp / "shutdown-called")],
    )
    values.update(over)
    return agent.Config(**values)  # type: ignore[arg-type]


def test_agent_samples_real_jupyter_without_touching_activity(local: Server, tmp_path: Path) -> None:
    jupyter = agent.Jupyter(agent_config(local, tmp_path))
    before = jupyter.get("/api/status")["last_activity"]
    first = jupyter.sample(time.time())
    # no kernel, no open notebook: nothing proves activity (the server's own last_activity is not used: an open
    # tab's polling moves it)
    assert first.jupyter_error is None and first.last_activity is None
    time.sleep(0.3)
    jupyter.sample(time.time())
    assert jupyter.get("/api/status")["last_activity"] == before  # no_track_activity=1: the agent is not activity
    broken = agent.Jupyter(agent_config(local, tmp_path, token_file=str(tmp_path / "none")))
    assert broken.sample(time.time()).jupyter_error == "no token file yet"
    (tmp_path / "bad").write_text("wrong")
    wrong = agent.Jupyter(agent_config(local, tmp_path, token_file=str(tmp_path / "bad")))
    assert "403" in (wrong.sample(time.time()).jupyter_error or "")
    down = agent.Jupyter(agent_config(local, tmp_path, jupyter_url=f"http://127.0.0.1:{free_port()}"))
    assert down.sample(time.time()).jupyter_error


def test_agent_check_stops_when_idle_and_writes_state(local: Server, tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text(json.dumps({"idle_stop_seconds": 600}))
    start = time.time()
    clock = {"now": start + 700}
    a = agent.Agent(agent_config(local, tmp_path), clock=lambda: clock["now"])
    a.samples = [agent.Sample(t=start - 10)]  # the agent has been watching since before the server's activity
    decision = a.check(elapsed=5)
    assert decision.action == "stop", decision
    assert (tmp_path / "shutdown-called").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["action"] == "stop" and state["idle_seconds"] >= 600 and state["accrued_seconds"] == 5
    assert oct((tmp_path / "state.json").stat().st_mode & 0o777) == "0o644"
    # `nbcloud autostop NAME off` takes effect at the next check
    (tmp_path / "agent.json").write_text(json.dumps({"idle_stop_seconds": None}))
    assert a.check(elapsed=5).action == "none"
    # accrued seconds survive an agent restart (and a reboot: the file is on the persistent disk)
    assert agent.Agent(agent_config(local, tmp_path)).state["accrued_seconds"] == 10


class FakeImds(http.server.BaseHTTPRequestHandler):
    notice: dict[str, str] | None = None

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and "X-aws-ec2-metadata-token-ttl-seconds" in self.headers
        self._answer(200 if ok else 400, b"imds-token")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
            self._answer(401, b"")
        elif self.path == "/latest/meta-data/spot/instance-action" and self.notice:
            self._answer(200, json.dumps(self.notice).encode())
        else:
            self._answer(404, b"")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_agent_spot_notice_records_open_notebooks(local: Server, tmp_path: Path) -> None:
    (local.home / "work.ipynb").write_text(json.dumps(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    req = urllib.request.Request(local.url + "/api/sessions", method="POST", headers={
        "Authorization": f"token {local.token}", "Content-Type": "application/json"},
        data=json.dumps({"path": "work.ipynb", "type": "notebook", "kernel": {"name": "python3"}}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        session = json.loads(resp.read())
    imds = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeImds)
    threading.Thread(target=imds.serve_forever, daemon=True).start()
    try:
        config = agent_config(local, tmp_path, imds_url=f"http://127.0.0.1:{imds.server_address[1]}")
        a = agent.Agent(config)
        a.watch_spot()
        assert not (tmp_path / "interruption.json").exists()
        FakeImds.notice = {"action": "stop", "time": "2026-11-23T12:30:00Z"}
        a.watch_spot()
        record = json.loads((tmp_path / "interruption.json").read_text())
        assert record["notice"] == FakeImds.notice
        assert [n["path"] for n in record["notebooks"]] == ["work.ipynb"]
        assert record["notebooks"][0]["saved_seconds_before_notice"] >= 0
        assert "lost" in record["note"]
        assert json.loads((tmp_path / "state.json").read_text())["spot_notice"] == FakeImds.notice
    finally:
        FakeImds.notice = None
        imds.shutdown()
        urllib.request.urlopen(urllib.request.Request(
            f"{local.url}/api/sessions/{session['id']}", method="DELETE",
            headers={"Authorization": f"token {local.token}"}), timeout=10).read()


def test_a_jupyter_not_listening_is_said_plainly(tmp_path: Path) -> None:
    """Found from outside: `status` right after `up` showed "jupyter unreadable (<urlopen error [Errno 111]
    Connection refused>)" (the agent's first check comes before Jupyter listens)."""
    token = tmp_path / "token"
    token.write_text("t")
    server = Server(url=f"http://127.0.0.1:{free_port()}", token="t", home=tmp_path, proc=None)  # type: ignore[arg-type]
    down = agent.Jupyter(agent_config(server, tmp_path, token_file=str(token)))
    assert down.sample(time.time()).jupyter_error == "not listening (starting, or stopped)"
