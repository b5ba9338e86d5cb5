"""The daemon's two doors: HTTP JSON on 127.0.0.1 for the CLI and tests, a unix socket for instances.

HTTP: ``GET /health``, ``GET /checkip`` (plain text, like https://checkip.amazonaws.com), ``GET /status``,
``POST /fault`` ``{"instance_id", "kind"}``, ``POST /fault-api`` ``{"operation", "code", "count", "zone"}``,
``POST /shutdown``. Unix socket (one JSON line each way): ``{"cmd": "power", "action": "poweroff"|"reboot"}``
from the ``shutdown``/``reboot`` shims; the caller's instance is found from its network namespace (loopback
mode: from its ancestry).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .unixsock import unix_address

if TYPE_CHECKING:
    from .daemon import Sandbox

__all__ = ["ControlServer", "InstanceSocket"]


class ControlServer:
    def __init__(self, sandbox: Sandbox, done: threading.Event) -> None:
        self.sandbox = sandbox
        self.done = done
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, name="control", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any, text: bool = False) -> None:
                data = (body if text else json.dumps(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                if path == "/checkip":
                    self._send(200, server.sandbox.network.caller_ip + "\n", text=True)
                elif path == "/health":
                    self._send(200, {"ok": True, "pid": os.getpid()})
                elif path == "/status":
                    self._send(200, server.sandbox.status())
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": "body is not JSON"})
                    return
                path = self.path.rstrip("/")
                try:
                    if path == "/fault":
                        result = server.sandbox.fault(body["instance_id"], body["kind"],
                                                      float(body.get("seconds", 120)))
                        self._send(200, result)
                    elif path == "/fault-api":
                        count = int(body.get("count", 1))
                        zone = body.get("zone") or None
                        server.sandbox.cloud.faults.add(body["operation"], body["code"], count, zone)
                        self._send(200, {"operation": body["operation"], "code": body["code"], "count": count,
                                         "zone": zone})
                    elif path == "/shutdown":
                        self._send(200, {"ok": True})
                        server.done.set()
                    else:
                        self._send(404, {"error": "not found"})
                except KeyError as exc:
                    self._send(404, {"error": str(exc.args[0] if exc.args else exc)})
                except (ValueError, RuntimeError) as exc:
                    self._send(400, {"error": str(exc)})

        return Handler


class InstanceSocket:
    def __init__(self, sandbox: Sandbox, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                creds = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, _gid = struct.unpack("3i", creds)
                try:
                    request = json.loads(self.rfile.readline())
                    reply = outer.handle(sandbox, request, pid, uid)
                except (json.JSONDecodeError, KeyError, ValueError) as exc:
                    reply = {"code": 1, "err": f"{exc}\n"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        with unix_address(path) as address:
            self.server = socketserver.ThreadingUnixStreamServer(address, Handler)
        self.server.daemon_threads = True
        os.chmod(path, 0o666)
        threading.Thread(target=self.server.serve_forever, name="instance-socket", daemon=True).start()

    @staticmethod
    def handle(sandbox: Sandbox, request: dict[str, Any], pid: int, uid: int) -> dict[str, Any]:
        host = sandbox.host_by_peer(pid)
        if host is None:
            return {"code": 1, "err": "not called from a sandbox instance\n"}
        if request.get("cmd") == "power":
            if uid not in (0, os.getuid()):  # loopback: the instance's "root" is the daemon's user
                return {"code": 1, "err": "Access denied (run it with sudo)\n"}
            action = sandbox.power(host, str(request.get("action", "poweroff")))
            return {"code": 0, "out": f"{host.instance_id} {action}\n"}
        return {"code": 1, "err": f"unknown command {request.get('cmd')}\n"}

    def close(self) -> None:
        self.server.shutdown()
        self.path.unlink(missing_ok=True)
