"""IMDSv2 for one sandbox instance, served on 169.254.169.254:80 inside its namespace (stdlib only).

``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1–21600) gives a token; every ``GET``
needs a valid ``X-aws-ec2-metadata-token`` (HttpTokens=required), else 401.
"""

from __future__ import annotations

import json
import re
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
# EC2 serves every dated API version beside "latest" (cloud-init asks for 2021-03-23, then older ones)
VERSIONS = ("1.0", "2007-01-19", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest")
_VERSION_PATH = re.compile(r"^/(\d{4}-\d{2}-\d{2}|1\.0)(/|$)")


def canonical_path(path: str) -> str:
    """``/2021-03-23/meta-data/x`` -> ``/latest/meta-data/x`` (the sandbox's data is the same in every version)."""
    return _VERSION_PATH.sub(r"/latest\2", path, count=1)


class MetadataSource:
    """Reads the instance's facts from files the daemon keeps current (``boot.json``, ``spot-action.json``)."""

    def __init__(self, instance_dir: Path) -> None:
        self.instance_dir = instance_dir

    def boot(self) -> dict[str, Any]:
        return json.loads((self.instance_dir / "boot.json").read_text())

    def public_key(self) -> str | None:
        """The launch key pair's public key (``public-key``, written at launch; absent without a key pair)."""
        try:
            return (self.instance_dir / "public-key").read_text().strip() or None
        except OSError:
            return None

    def lookup(self, path: str) -> tuple[int, str | bytes]:
        if path in ("", "/"):
            return 200, "\n".join(VERSIONS)
        path = canonical_path(path)
        if path in ("/latest", "/latest/"):
            return 200, "dynamic\nmeta-data\nuser-data"
        boot = self.boot()
        meta = {
            "instance-id": boot["instance_id"],
            "instance-type": boot["instance_type"],
            "ami-id": boot["ami_id"],
            "local-ipv4": boot["address"],
            "hostname": boot["hostname"],
            "local-hostname": boot["hostname"],
            "placement/availability-zone": boot["availability_zone"],
            "placement/region": boot["region"],
            "instance-life-cycle": boot.get("lifecycle", "on-demand"),
            "mac": boot.get("mac", "02:00:00:00:00:01"),
        }
        if path in ("/latest/user-data", "/latest/user-data/"):
            # the bytes as given to RunInstances: gzip and MIME multipart must arrive unchanged
            data = self.instance_dir / "user-data"
            return (200, data.read_bytes()) if data.exists() else (404, "Not Found")
        if boot.get("public_address", boot["address"]):  # EC2 lists public-ipv4 only when there is one
            meta["public-ipv4"] = boot.get("public_address", boot["address"])
        key_line = self.public_key()
        if key_line:  # as EC2 lists it: index=key name, then the OpenSSH line under 0/openssh-key
            meta["public-keys/0/openssh-key"] = key_line
        if path in ("/latest/meta-data", "/latest/meta-data/"):
            # spot/ only while there is a notice: a listed key must answer (cloud-init crawls the listing)
            spot = {"spot/"} if (self.instance_dir / "spot-action.json").exists() else set()
            tops = sorted({k.split("/")[0] + ("/" if "/" in k else "") for k in meta} | spot)
            return 200, "\n".join(tops)
        if path.startswith("/latest/dynamic"):
            return self._dynamic(path[len("/latest/dynamic"):].strip("/"), boot)
        prefix = "/latest/meta-data/"
        if not path.startswith(prefix):
            return 404, "Not Found"
        key = path[len(prefix) :].rstrip("/")
        if key == "spot/instance-action":
            notice = self.instance_dir / "spot-action.json"
            return (200, notice.read_text()) if notice.exists() else (404, "Not Found")
        if key in meta:
            return 200, str(meta[key])
        if key == "public-keys" and key_line:
            return 200, f"0={boot.get('key_name') or 'key'}"
        children = sorted({k[len(key) + 1 :].split("/")[0] for k in meta if k.startswith(key + "/")})
        if key == "spot":
            children = ["instance-action"] if (self.instance_dir / "spot-action.json").exists() else []
        return (200, "\n".join(children)) if children else (404, "Not Found")


    @staticmethod
    def _dynamic(key: str, boot: dict[str, Any]) -> tuple[int, str]:
        """``dynamic/instance-identity/document``: the JSON EC2 signs (unsigned here), which cloud-init reads."""
        if key == "":
            return 200, "instance-identity/"
        if key == "instance-identity":
            return 200, "document"
        if key != "instance-identity/document":
            return 404, "Not Found"
        document = {
            "accountId": "123456789012", "architecture": "x86_64", "availabilityZone": boot["availability_zone"],
            "imageId": boot["ami_id"], "instanceId": boot["instance_id"], "instanceType": boot["instance_type"],
            "privateIp": boot["address"], "region": boot["region"], "version": "2017-09-30",
            "pendingTime": boot.get("pending_time", "2026-01-01T00:00:00Z"), "kernelId": None, "ramdiskId": None,
            "billingProducts": None, "devpayProductCodes": None, "marketplaceProductCodes": None,
        }
        return 200, json.dumps(document, indent=2)


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

        def _reply(self, code: int, body: str | bytes, extra: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "text/plain")
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


def main(argv: list[str] | None = None) -> None:
    """``python -m nbcloud.sandbox.imds <instance-dir>``: serve one instance's IMDS until killed (os mode:
    run inside the instance's network namespace, beside its container)."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m nbcloud.sandbox.imds <instance-dir>", file=sys.stderr)
        raise SystemExit(2)
    serve_imds(MetadataSource(Path(args[0])))
    threading.Event().wait()


if __name__ == "__main__":
    main()
