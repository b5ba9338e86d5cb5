"""IMDSv2 for one sandbox instance, served on 169.254.169.254:80 inside its namespace (stdlib only).

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1–21600) gives a token; every ``GET``
needs a valid ``X-aws-ec2-metadata-token`` (HttpTokens=required), else 401.
"""

from __future__ import annotations

import json
import secrets
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["MetadataSource", "serve_imds"]

IMDS_ADDRESS = "169.254.169.254"


class MetadataSource:
    """Reads the instance's facts from files the daemon keeps current (``boot.json``, ``spot-action.json``)."""

    def __init__(self, instance_dir: Path) -> None:
        self.instance_dir = instance_dir

    def boot(self) -> dict[str, Any]:
        return json.loads((self.instance_dir / "boot.json").read_text())

    def lookup(self, path: str) -> tuple[int, str]:
        boot = self.boot()
        meta = {
            "instance-id": boot["instance_id"],
            "instance-type": boot["instance_type"],
            "ami-id": boot["ami_id"],
            "local-ipv4": boot["address"],
            "public-ipv4": boot["address"],
            "hostname": boot["hostname"],
            "local-hostname": boot["hostname"],
            "placement/availability-zone": boot["availability_zone"],
            "placement/region": boot["region"],
            "instance-life-cycle": boot.get("lifecycle", "on-demand"),
            "mac": boot.get("mac", "02:00:00:00:00:01"),
        }
        if path in ("/latest/user-data", "/latest/user-data/"):
            data = self.instance_dir / "user-data"
            return (200, data.read_text(errors="replace")) if data.exists() else (404, "Not Found")
        if path in ("/latest/meta-data", "/latest/meta-data/"):
            tops = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in meta} | {"spot/"})
            return 200, "\n".join(tops)
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix):
            return 404, "Not Found"
        key = path[len(prefix) :].rstrip("/")
        if key == "spot/instance-action":
            notice = self.instance_dir / "spot-action.json"
            return (200, notice.read_text()) if notice.exists() else (404, "Not Found")
        if key in meta:
            return 200, str(meta[key])
        children = sorted({k[len(key) + 1 :].split("/")[0] for k in meta if k.startswith(key + "/")})
        if key == "spot":
            children = ["instance-action"] if (self.instance_dir / "spot-action.json").exists() else []
        return (200, "\n".join(children)) if children else (404, "Not Found")


class _Tokens:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}

    def issue(self, ttl: int) -> str:
        token = secrets.token_urlsafe(40)
        with self._lock:
            now = time.monotonic()
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ttl
        return token

    def valid(self, token: str | None) -> bool:
        with self._lock:
            return bool(token) and self._tokens.get(token or "", 0) > time.monotonic()


def _handler(source: MetadataSource, tokens: _Tokens) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "EC2ws"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: str, extra: dict[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.rstrip("/") != "/latest/api/token":
                self._reply(404, "Not Found")
                return
            if self.headers.get("X-Forwarded-For"):
                self._reply(403, "Forbidden")
                return
            try:
                ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
            except ValueError:
                self._reply(400, "Bad Request")
                return
            if not 1 <= ttl <= 21600:
                self._reply(400, "Bad Request")
                return
            token = tokens.issue(ttl)
            self._reply(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": str(ttl)})

        def do_GET(self) -> None:
            if not tokens.valid(self.headers.get("X-aws-ec2-metadata-token")):
                self._reply(401, "Unauthorized")
                return
            try:
                code, body = source.lookup(self.path.split("?")[0])
            except (OSError, ValueError, KeyError):
                code, body = 500, "Internal Server Error"
            self._reply(code, body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # HTTPServer's would resolve our name (getfqdn): no DNS in a sandbox
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, (bytes, bytearray)) else host


def serve_imds(source: MetadataSource, address: str = IMDS_ADDRESS, port: int = 80) -> Callable[[], None]:
    """Start the server in a daemon thread; returns its shutdown function."""
    server = _Server((address, port), _handler(source, _Tokens()))
    threading.Thread(target=server.serve_forever, name="imds", daemon=True).start()
    return server.shutdown
