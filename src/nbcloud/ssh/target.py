"""Where an existing machine is and which host key it must present: parsing, `ssh -G`, and key pinning.

Pinning, never trust-on-first-use: the host key comes from the user's own known_hosts (they already trusted it,
``ssh-keygen -F`` also reads hashed entries) or is fetched with ``ssh-keyscan`` and accepted only when its SHA256
fingerprint equals the one the user gave. Without either nbcloud refuses; it never shows a "yes" prompt.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import RemoteError, UsageError

__all__ = ["HostKey", "SshTarget", "fingerprint", "known_host_keys", "parse_host", "parse_ssh_g", "pinned_host_key",
           "resolve_target", "scan_host_keys"]

_HOST = re.compile(r"^(?:(?P<user>[^@\s]+)@)?(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]*))"
                   r"(?::(?P<port>\d{1,5}))?$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
# (neither a user nor a host may start with '-': both reach ssh's command line, where that would be an option)
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")
# Preference when a host has several keys: the one pinned must be one the client then negotiates first.
_KEY_ORDER = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "rsa-sha2-512",
              "rsa-sha2-256", "ssh-rsa")
_HINT_HOST = "write it as [user@]HOST[:PORT], e.g. ubuntu@203.0.113.7 or me@box.example.org:2222"


@dataclass(frozen=True)
class SshTarget:
    """A machine the user reaches by ssh, with ssh's own defaults (their ~/.ssh/config) resolved."""

    user: str
    hostname: str
    port: int
    identity_file: Path
    known_hosts_files: tuple[Path, ...] = ()
    host_key_alias: str | None = None

    @property
    def address(self) -> str:
        """user@host:port — also the record's instance id: one adopted name per machine and account."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{self.user}@{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How ssh names this host in known_hosts: the HostKeyAlias, else host, else [host]:port."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


@dataclass(frozen=True)
class HostKey:
    key_type: str
    blob: str  # base64

    @property
    def public(self) -> str:
        return f"{self.key_type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: str) -> str:
    """OpenSSH's SHA256 fingerprint of a base64 key blob (``ssh-keygen -lf`` prints the same)."""
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_host(text: str) -> tuple[str | None, str, int | None]:
    """'[user@]HOST[:PORT]' → (user or None, host, port or None). IPv6 goes in brackets: '[2001:db8::1]:22'."""
    match = _HOST.match(text.strip())
    if not match:
        raise UsageError(f"invalid --host {text!r}", _HINT_HOST)
    user = match.group("user")
    if user is not None and not _USER.match(user):
        raise UsageError(f"invalid user {user!r} in --host", _HINT_HOST)
    port = int(match.group("port")) if match.group("port") else None
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"port {port} in --host is out of range", "use a port in 1-65535")
    return user, match.group("v6") or match.group("name"), port


def parse_ssh_g(output: str) -> dict[str, list[str]]:
    """`ssh -G` prints one 'keyword value' per line; some keywords (identityfile) repeat."""
    options: dict[str, list[str]] = {}
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        if key:
            options.setdefault(key.lower(), []).append(value.strip())
    return options


def _ssh_g(user_config: Path, user: str | None, host: str, port: int | None) -> dict[str, list[str]]:
    ssh = shutil.which("ssh")
    if not ssh:
        raise UsageError("OpenSSH client `ssh` not found", "install it (Debian/Ubuntu: apt install openssh-client)")
    config = str(user_config) if user_config.exists() else "/dev/null"
    argv = [ssh, "-F", config, "-G", *(["-l", user] if user else []), *(["-p", str(port)] if port else []), host]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"ssh cannot read the settings for {host}: {detail}", f"check {config}")
    return parse_ssh_g(done.stdout)


def _expand(path: str, user_home: Path) -> Path:
    return user_home / path[2:] if path.startswith("~/") else Path(path)


def resolve_target(host: str, identity_file: Path | None, user_config: Path) -> SshTarget:
    """--host and --identity-file, completed the way the user's own ssh would (User, HostName, Port, keys)."""
    user, name, port = parse_host(host)
    options = _ssh_g(user_config, user, name, port)
    home = Path.home()

    def one(key: str, default: str = "") -> str:
        return (options.get(key) or [default])[0]

    if one("proxyjump", "none") != "none" or one("proxycommand", "none") != "none":
        raise UsageError(f"{host} is reached through a ProxyJump/ProxyCommand in your ssh config, which nbcloud's "
                         "entry cannot follow yet", "give an address this machine reaches directly")
    resolved_user = user or one("user")
    if not _USER.match(resolved_user):
        raise UsageError(f"cannot log in as {resolved_user!r}", "name the user: --host USER@HOST")
    if resolved_user == "root":
        raise UsageError("nbcloud does not run Jupyter as root on a machine you already have",
                         "log in as a user with passwordless sudo: --host USER@HOST")
    if identity_file is not None:
        key = identity_file.expanduser().resolve()
        if not key.is_file():
            raise UsageError(f"identity file {identity_file} not found", "pass your private key: --identity-file KEY")
    else:
        candidates = [_expand(p, home) for p in options.get("identityfile", [])]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise UsageError(f"no private key found for {host} (looked at {', '.join(map(str, candidates)) or '-'})",
                             "pass the key you log in with: --identity-file KEY")
        key = found[0].resolve()
    if key.stat().st_mode & 0o077:
        raise UsageError(f"identity file {key} is readable by other users and ssh will refuse it",
                         f"chmod 600 {key}")
    known = tuple(_expand(p, home) for p in " ".join(options.get("userknownhostsfile", [])).split())
    alias = one("hostkeyalias") or None
    return SshTarget(user=resolved_user, hostname=one("hostname", name), port=int(one("port", "22")),
                     identity_file=key, known_hosts_files=known, host_key_alias=alias)


def _parse_key_lines(text: str) -> list[HostKey]:
    keys = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", "@")):  # comments, @revoked and @cert-authority lines
            continue
        fields = line.split()
        if len(fields) >= 3 and fields[1] in _KEY_ORDER:
            keys.append(HostKey(fields[1], fields[2]))
    return keys


def known_host_keys(target: SshTarget) -> list[HostKey]:
    """The keys the user's known_hosts files hold for the target (hashed entries too), best first."""
    keygen = shutil.which("ssh-keygen")
    if not keygen:
        raise UsageError("`ssh-keygen` not found", "install the OpenSSH client (apt install openssh-client)")
    found: list[HostKey] = []
    for path in target.known_hosts_files:
        if not path.is_file():
            continue
        done = subprocess.run([keygen, "-F", target.known_hosts_name, "-f", str(path)], capture_output=True,
                              text=True, timeout=15)
        found += [k for k in _parse_key_lines(done.stdout) if k not in found]
    return sorted(found, key=lambda k: _KEY_ORDER.index(k.key_type))


def scan_host_keys(target: SshTarget, timeout: int = 5) -> list[HostKey]:
    """What the host presents right now (unverified: only a fingerprint match makes one trusted)."""
    keyscan = shutil.which("ssh-keyscan")
    if not keyscan:
        raise UsageError("`ssh-keyscan` not found", "install the OpenSSH client (apt install openssh-client)")
    done = subprocess.run([keyscan, "-T", str(timeout), "-p", str(target.port), target.hostname],
                          capture_output=True, text=True, timeout=timeout * 4 + 5)
    keys = _parse_key_lines(done.stdout)
    if not keys:
        raise RemoteError(f"{target.hostname}:{target.port} did not present a host key",
                          f"check that `ssh -p {target.port} {target.user}@{target.hostname}` reaches it")
    return keys


def pinned_host_key(target: SshTarget, expected_fingerprint: str | None) -> HostKey:
    """The key to pin for the target, or a one-line refusal: never a key nobody vouched for."""
    if expected_fingerprint is not None:
        wanted = expected_fingerprint.strip()
        if not _FINGERPRINT.match(wanted):
            raise UsageError(f"invalid --host-key-fingerprint {expected_fingerprint!r}",
                             "give the SHA256 form, e.g. SHA256:abc…; on the host: "
                             "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
        wanted = wanted.rstrip("=")
        for key in scan_host_keys(target):
            if key.fingerprint == wanted:
                return key
        raise UsageError(f"{target.hostname}:{target.port} does not present a host key with fingerprint {wanted}",
                         "check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); "
                         "if it is right, someone may be intercepting the connection")
    keys = known_host_keys(target)
    if keys:
        return keys[0]
    where = ", ".join(str(p) for p in target.known_hosts_files) or "your known_hosts"
    raise UsageError(
        f"no pinned host key for {target.known_hosts_name} (not in {where}); nbcloud does not trust a key on first use",
        f"connect once with `ssh -p {target.port} {target.user}@{target.hostname}` and check the fingerprint it "
        "shows, or pass --host-key-fingerprint SHA256:… "
        "(on the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)")
