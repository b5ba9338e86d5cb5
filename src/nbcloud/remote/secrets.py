"""Secrets for the instance, made on the client and sent only over an SSH session's stdin.

The token, password hash, TLS key and gateway token never appear in user-data (readable by anyone with
``ec2:DescribeInstanceAttribute`` and from IMDS on the instance), in a rendered file outside the 0700 secrets
directory, or on any command line (``ps`` shows those to every user).
"""

from __future__ import annotations

import base64
import json
import secrets
import shlex
from datetime import UTC, datetime, timedelta

from .machine_root import JUPYTER_IP_ENV, SH_ROOT, py_rooted
from .spec import IDLE_STOP_FLOOR, LOGIN_USER

__all__ = [
    "AGENT_HOLD",
    "AGENT_SETTINGS",
    "agent_settings_json",
    "autostop_update_script",
    "cert_ip_addresses",
    "hash_password",
    "hold_script",
    "install_secrets_script",
    "install_tls_script",
    "make_tls_cert",
    "new_token",
    "restart_jupyter_script",
]

AGENT_SETTINGS = "agent.json"


class _Unset:
    """Marks "not passed" where None already means "off"."""


_UNSET = _Unset()  # in the secrets dir: writable by the login user, read by the root agent


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    """An argon2 hash in jupyter_server's own format (``argon2:$argon2id$…``), verified by ``passwd_check``.

    Made with argon2-cffi directly (a core dependency) with jupyter_server's parameters, so `up --public` needs no
    Jupyter on this machine.
    """
    if not password:
        from ..errors import UsageError

        raise UsageError("the password is empty", "choose a password of at least 8 characters")
    import argon2  # here: the CLI starts without it

    hasher = argon2.PasswordHasher(memory_cost=10240, time_cost=10, parallelism=8)  # jupyter_server's passwd()
    return f"argon2:{hasher.hash(password)}"


def make_tls_cert(common_name: str, ip: str, days: int = 825) -> tuple[str, str, str]:
    """A self-signed ECDSA P-256 certificate for ``ip`` → (cert_pem, key_pem, sha256 fingerprint ``AA:BB:…``).

    ECDSA rather than ed25519: browsers do not accept ed25519 certificates, tornado/OpenSSL take either.
    The client pins the fingerprint, so self-signed is safe for it; a browser shows a warning once.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.now(UTC)
    san = [x509.IPAddress(ipaddress.ip_address(ip)), x509.DNSName(common_name)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate a little clock skew on the instance
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    fingerprint = ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    return cert_pem, key_pem, fingerprint


def cert_ip_addresses(cert_pem: str) -> list[str]:
    """The IP addresses a certificate's subjectAltName names (what a browser or curl checks the address against)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def agent_settings_json(
    idle_stop_seconds: int | None, max_cost_usd: float | None = None, hourly_usd: float | None = None
) -> str:
    return json.dumps(
        {"idle_stop_seconds": idle_stop_seconds, "max_cost_usd": max_cost_usd, "hourly_usd": hourly_usd},
        sort_keys=True,
    )


# Runs as the login user over ssh (`bash -s` style). Each stdin line is "<file> <base64>": `read` and `printf` are
# bash builtins, so the decoded secret is never an argument of a process. The token goes last because the Jupyter
# unit waits for it: once it exists, the cert, key and password hash are already in place. NBCLOUD_ROOT is set only
# where the machine's "/" is a directory (a sandbox instance without root); elsewhere the paths are the machine's.
_INSTALL = r"""set -euo pipefail
umask 077
d="@@ROOT@@"{dir}
# the first ssh session may run while the bootstrap (root) is still making this directory and handing it over
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  if mkdir -p "$d" 2>/dev/null && chmod 0700 "$d" 2>/dev/null; then break; fi
  sleep 0.25
done
mkdir -p "$d"
chmod 0700 "$d"
while read -r name data; do
  case "$name" in */*|.*|"") echo "nbcloud: refusing secret name $name" >&2; exit 2;; esac
  printf '%s' "$data" | base64 -d > "$d/.$name.tmp"
  chmod 0600 "$d/.$name.tmp"
  mv -f "$d/.$name.tmp" "$d/$name"
done
echo "nbcloud: secrets installed"
"""


def install_secrets_script(
    token: str,
    *,
    password_hash: str | None = None,
    cert_pem: str | None = None,
    key_pem: str | None = None,
    gateway_token: str | None = None,
    agent_settings: str | None = None,
    idle_stop_seconds: int | _Unset | None = _UNSET,
    max_cost_usd: float | None = None,
    hourly_usd: float | None = None,
    login_user: str = LOGIN_USER,
    secrets_dir: str | None = None,
) -> tuple[str, bytes]:
    """(script, stdin) to run as the login user: ``ssh host bash -c <script>`` with ``stdin`` on its input.

    Writes 0600 files into ``/home/<user>/.config/nbcloud/``: ``token``, ``password.hash``, ``jupyter.crt``,
    ``jupyter.key``, ``gateway-token`` and ``agent.json`` (each only when given). ``agent.json`` comes from
    ``agent_settings`` (JSON text) or, when ``idle_stop_seconds`` is passed (``None`` = off), from it with
    ``max_cost_usd``/``hourly_usd``; otherwise the one the bootstrap wrote (or ``autostop`` changed) stays.
    """
    if agent_settings is None and not isinstance(idle_stop_seconds, _Unset):
        agent_settings = agent_settings_json(idle_stop_seconds, max_cost_usd, hourly_usd)
    files: list[tuple[str, str]] = []
    if password_hash is not None:
        files.append(("password.hash", password_hash))
    if cert_pem is not None:
        files.append(("jupyter.crt", cert_pem))
    if key_pem is not None:
        files.append(("jupyter.key", key_pem))
    if gateway_token is not None:
        files.append(("gateway-token", gateway_token))
    if agent_settings is not None:
        files.append((AGENT_SETTINGS, agent_settings))
    files.append(("token", token))
    return _install_files(files, login_user, secrets_dir)


def _install_files(files: list[tuple[str, str]], login_user: str, secrets_dir: str | None) -> tuple[str, bytes]:
    stdin = "".join(f"{name} {base64.b64encode(data.encode()).decode()}\n" for name, data in files)
    script = _INSTALL.format(dir=shlex.quote(secrets_dir or f"/home/{login_user}/.config/nbcloud")).replace(
        "@@ROOT@@", SH_ROOT)
    return script, stdin.encode()


def install_tls_script(cert_pem: str, key_pem: str, *, login_user: str = LOGIN_USER,
                       secrets_dir: str | None = None) -> tuple[str, bytes]:
    """(script, stdin) that replaces only ``jupyter.key`` and ``jupyter.crt`` (public mode, new address).

    The same stdin-only path as :func:`install_secrets_script` (0600 files, nothing on a command line); the token,
    password hash and agent settings on the instance are left as they are. The running Jupyter keeps the old pair
    until :func:`restart_jupyter_script`.
    """
    return _install_files([("jupyter.key", key_pem), ("jupyter.crt", cert_pem)], login_user, secrets_dir)


# Run as the login user after install_tls_script. Jupyter reads its certificate only at start, so it is restarted;
# before the bootstrap has finished there is no unit yet and the bootstrap starts Jupyter with the new pair anyway.
# The wait compares the served certificate with the new one: a restart that brought back the old pair fails here
# rather than at the client's pin check. Only the (public) fingerprint is in the script.
_RESTART = r"""set -euo pipefail
if [ ! -e "@@ROOT@@/var/lib/nbcloud/bootstrap.done" ]; then
  echo "nbcloud: the bootstrap has not finished; Jupyter will start with the new certificate"; exit 0
fi
sudo systemctl restart {unit}
exec "@@ROOT@@"{python} - <<'PY'
import hashlib, os, ssl, sys, time
want, deadline, last = "{fingerprint}", time.monotonic() + {timeout}, "no answer"
while time.monotonic() < deadline:
    try:
        pem = ssl.get_server_certificate((os.environ.get("@@JUPYTER_IP_ENV@@") or "127.0.0.1", {port}), timeout=2)
        seen = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
        if seen == want:
            print("nbcloud: Jupyter serves the new certificate"); sys.exit(0)
        last = "the old certificate (sha256 " + seen[:16] + ")"
    except (OSError, ValueError) as exc:
        last = str(exc) or type(exc).__name__
    time.sleep(0.25)
print("nbcloud: Jupyter did not serve the new certificate within {timeout} s: " + last, file=sys.stderr)
sys.exit(4)
PY
""".replace("@@ROOT@@", SH_ROOT).replace("@@JUPYTER_IP_ENV@@", JUPYTER_IP_ENV)


def restart_jupyter_script(fingerprint: str, port: int, timeout: float = 120,
                           python: str = "/opt/nbcloud/venv/bin/python",
                           unit: str = "nbcloud-jupyter.service") -> str:
    """Restart Jupyter and wait until it serves the certificate whose SHA-256 is ``fingerprint`` (``AA:BB:…``)."""
    want = fingerprint.replace(":", "").lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ValueError(f"not a SHA-256 fingerprint: {fingerprint!r}")
    return (_RESTART.replace("{unit}", shlex.quote(unit)).replace("{python}", shlex.quote(python))
            .replace("{fingerprint}", want).replace("{port}", str(int(port)))
            .replace("{timeout}", str(int(timeout))))


def autostop_update_script(idle_stop_seconds: int | None, login_user: str = LOGIN_USER,
                           floor: int = IDLE_STOP_FLOOR) -> str:
    """A one-line command (run as the login user) that sets the idle limit; the agent re-reads it each check."""
    if idle_stop_seconds is not None and (not isinstance(idle_stop_seconds, int) or idle_stop_seconds < floor):
        from ..errors import UsageError

        raise UsageError(f"the idle stop must be at least {floor} s",
                         "use e.g. `nbcloud autostop NAME 30m` or `off`")
    path = f"/home/{login_user}/.config/nbcloud/{AGENT_SETTINGS}"
    value = "None" if idle_stop_seconds is None else str(int(idle_stop_seconds))
    code = (
        f"import json,os;p={py_rooted(path)};"
        "d=json.load(open(p)) if os.path.exists(p) else {};"
        f"d['idle_stop_seconds']={value};t=p+'.tmp';open(t,'w').write(json.dumps(d,sort_keys=True));"
        "os.chmod(t,0o600);os.replace(t,p);print('idle_stop_seconds',d['idle_stop_seconds'])"
    )
    return "python3 -c " + shlex.quote(code)


AGENT_HOLD = "hold"  # beside the agent's settings; the agent reads it every check (nbcloud_agent.read_hold)


def hold_script(reason: str | None, login_user: str = LOGIN_USER) -> str:
    """A one-line command (run as the login user) that holds the instance up (``reason``) or, with None, releases
    it. The reason goes through the command's environment-free argv as a quoted word, never into code."""
    path = f"/home/{login_user}/.config/nbcloud/{AGENT_HOLD}"
    if reason is None:
        code = f"import os;p={py_rooted(path)};print(os.path.exists(p));" \
               "os.path.exists(p) and os.remove(p)"
        return "python3 -c " + shlex.quote(code)
    code = (f"import os,sys;p={py_rooted(path)};t=p+'.tmp';"
            "os.makedirs(os.path.dirname(p),exist_ok=True);open(t,'w').write(sys.argv[1]+'\\n');os.replace(t,p)")
    return "python3 -c " + shlex.quote(code) + " " + shlex.quote(hold_reason(reason))


def hold_reason(reason: str) -> str:
    """What a hold keeps of its reason: one line of printable characters, at most 200 (`status` shows it)."""
    return "".join(ch for ch in " ".join(reason.split()) if ch.isprintable())[:200]
