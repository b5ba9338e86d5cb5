"""Public mode (`up --public`): Jupyter over TLS with a password, reached without SSH by the caller's /32 only.

The certificate is self-signed and made here; its SHA-256 fingerprint is pinned in the local record and nbcloud's own
client (`fetch_verified`) accepts exactly that certificate. The private key goes to the instance over SSH stdin (like
the token) and is not kept on this machine; the certificate is kept in the secrets dir for the user's browser/curl.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import RemoteError, UsageError
from .context import Context

__all__ = ["MIN_PASSWORD", "PinnedResponse", "cert_path", "check_password", "fetch_verified", "pinned_fingerprint",
           "prepare_tls"]

MIN_PASSWORD = 8
FINGERPRINT_KEY = "tls_fingerprint"


def check_password(password: str | None) -> str:
    if not password or len(password) < MIN_PASSWORD:
        raise UsageError("the Jupyter password is too short", f"choose one of at least {MIN_PASSWORD} characters")
    return password


def cert_path(ctx: Context, name: str) -> Path:
    return ctx.paths.secrets_dir / f"{name}.crt"


def prepare_tls(ctx: Context, name: str, host: str) -> tuple[str, str]:
    """Make the certificate for ``host``, keep it locally, pin its fingerprint → (cert_pem, key_pem) to install."""
    from ..config import write_private
    from ..remote.secrets import make_tls_cert

    cert_pem, key_pem, fingerprint = make_tls_cert(name, host)
    write_private(cert_path(ctx, name), cert_pem)
    record = ctx.store.get(name)
    spec = dict(record.spec or {}) if record else {}
    ctx.store.update(name, spec=spec | {FINGERPRINT_KEY: fingerprint})
    return cert_pem, key_pem


def pinned_fingerprint(ctx: Context, name: str) -> str | None:
    record = ctx.store.get(name)
    value = (record.spec or {}).get(FINGERPRINT_KEY) if record else None
    return str(value) if value else None


def _norm(fingerprint: str) -> str:
    return fingerprint.replace(":", "").lower()


@dataclass(frozen=True)
class PinnedResponse:
    status: int
    headers: dict[str, str]
    cookies: list[str]
    body: bytes


def fetch_verified(url: str, fingerprint: str, *, method: str = "GET", body: bytes | None = None,
                   headers: dict[str, str] | None = None, timeout: float = 30) -> PinnedResponse:
    """One HTTPS request that is sent only after the server presented the certificate pinned as ``fingerprint``.

    Hostname and CA checks are replaced by the pin (the certificate is self-signed): anything else is refused
    before a byte of the request (which may carry a password or token) leaves this machine. Redirects are returned,
    not followed.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise UsageError(f"not an https URL: {url}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # verified below by the pin, which is stricter than a CA
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=context)
    try:
        conn.connect()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True) or b""  # type: ignore[union-attr]
        seen = hashlib.sha256(der).hexdigest()
        if seen != _norm(fingerprint):
            raise RemoteError(f"{parts.hostname}:{parts.port} presented a certificate that is not the pinned one "
                              f"(sha256 {seen[:16]}…, expected {_norm(fingerprint)[:16]}…)",
                              "someone may be intercepting the connection; do not send the password there")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return PinnedResponse(response.status, {k.lower(): v for k, v in response.getheaders()},
                              response.headers.get_all("Set-Cookie") or [], data)
    finally:
        conn.close()
