"""Public mode (`up --public`): Jupyter over TLS with a password, reached without SSH by the caller's /32 only.

The certificate is self-signed and made here; its SHA-256 fingerprint is pinned in the local record and nbcloud's own
client (`fetch_verified`) accepts exactly that certificate. The private key goes to the instance over SSH stdin (like
the token) and is not kept on this machine; the certificate is kept in the secrets dir for the user's browser/curl.

The certificate names the instance's address. A stop/start gives the instance a new one, so `start` (and `up`
reusing a stopped instance) calls :func:`reissue_tls_if_moved`: a new certificate for the new address, installed the
same way, Jupyter restarted on it, the new fingerprint pinned.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import RemoteError, UsageError
from ..state import Record
from .context import Context, Progress, no_progress

__all__ = ["MIN_PASSWORD", "PinnedResponse", "cert_path", "check_password", "fetch_verified", "pinned_fingerprint",
           "prepare_tls", "reissue_tls_if_moved", "stored_password_hash"]

MIN_PASSWORD = 8
FINGERPRINT_KEY = "tls_fingerprint"
PASSWORD_HASH_KEY = "password_hash"  # in the local record (0600 state, like the token), for a spot relaunch


def check_password(password: str | None) -> str:
    if not password or len(password) < MIN_PASSWORD:
        raise UsageError("the Jupyter password is too short", f"choose one of at least {MIN_PASSWORD} characters")
    return password


def cert_path(ctx: Context, name: str) -> Path:
    return ctx.paths.secrets_dir / f"{name}.crt"


def prepare_tls(ctx: Context, name: str, host: str, password_hash: str | None = None) -> tuple[str, str]:
    """Make the certificate for ``host``, keep it locally, pin its fingerprint → (cert_pem, key_pem) to install.

    ``password_hash`` (the argon2 hash, never the password) is kept in the local record too: a reclaimed spot
    instance is relaunched on a new root disk, and without the hash there its Jupyter config would not load.
    """
    from ..remote.secrets import make_tls_cert

    cert_pem, key_pem, fingerprint = make_tls_cert(name, host)
    _pin(ctx, name, cert_pem, fingerprint, {PASSWORD_HASH_KEY: password_hash} if password_hash else {})
    return cert_pem, key_pem


def stored_password_hash(record: Record) -> str | None:
    """The argon2 hash ``up --public`` installed, for a relaunch (read it before `down` forgets the record)."""
    value = (record.spec or {}).get(PASSWORD_HASH_KEY)
    return str(value) if value else None


def _pin(ctx: Context, name: str, cert_pem: str, fingerprint: str, extra: dict[str, str] | None = None) -> None:
    from ..config import write_private

    write_private(cert_path(ctx, name), cert_pem)
    record = ctx.store.get(name)
    spec = dict(record.spec or {}) if record else {}
    ctx.store.update(name, spec=spec | {FINGERPRINT_KEY: fingerprint} | (extra or {}))


def _names_host(ctx: Context, name: str, host: str) -> bool:
    """The certificate kept for ``name`` names ``host`` (a missing or unreadable one does not)."""
    from ..remote.secrets import cert_ip_addresses

    try:
        return host in cert_ip_addresses(cert_path(ctx, name).read_text())
    except (OSError, ValueError):
        return False


def reissue_tls_if_moved(ctx: Context, name: str, host: str | None, *, progress: Progress = no_progress,
                         timeout: float = 120) -> bool:
    """Public mode only: when the certificate does not name ``host`` (the instance's current address), make one
    that does, install it on the instance, restart Jupyter on it and pin its fingerprint. True if it did.

    Order matters for the pin. The new pair is installed first (one ssh session, stdin only); the pin moves as soon
    as that succeeded, because from then on the files on the instance are the new ones and the next Jupyter start
    serves them whatever happens to this process. A failed install leaves the old pin and certificate, which still
    do not name ``host``, so the next `start` tries again. Then Jupyter is restarted and the instance waits until it
    serves the new certificate.
    """
    from ..remote.secrets import install_tls_script, make_tls_cert, restart_jupyter_script
    from ..ssh import session
    from .instances import JUPYTER_PORT

    record = ctx.store.get(name)
    if record is None or not (record.spec or {}).get("public") or not host or _names_host(ctx, name, host):
        return False
    progress(f"new TLS certificate for {host} (the address changed)")
    cert_pem, key_pem, fingerprint = make_tls_cert(name, host)
    alias = f"nb-{name}"
    script, stdin = install_tls_script(cert_pem, key_pem, login_user=record.user)
    session.run(ctx.paths.ssh_config, alias, script, input=stdin, timeout=60)
    _pin(ctx, name, cert_pem, fingerprint)
    progress(f"restarting Jupyter on the new certificate (sha256 {fingerprint[:23]}…)")
    done = session.run(ctx.paths.ssh_config, alias, restart_jupyter_script(fingerprint, JUPYTER_PORT, timeout),
                       timeout=timeout + 60, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RemoteError(f"Jupyter on {name} did not come back on its new certificate: {detail}",
                          f"`nbcloud logs {name}` shows Jupyter's log; `nbcloud start {name}` tries again")
    return True


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
