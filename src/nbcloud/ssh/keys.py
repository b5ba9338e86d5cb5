"""Key material made on the user's machine: the login key pair and the instance's host key.

The private login key never leaves this machine (0600). The host key pair is generated here too and handed to
the instance through user-data, so the client can pin it before the first connection: no "yes" prompt and no
trust on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ensure_private_dir, write_private

__all__ = ["KeyPair", "generate_ed25519", "load_or_create_host_key", "load_or_create_login_key"]


@dataclass(frozen=True)
class KeyPair:
    private_openssh: str
    public_openssh: str  # "ssh-ed25519 AAAA… comment"

    @property
    def public_blob(self) -> str:
        """'ssh-ed25519 AAAA…' without the comment, as known_hosts and AWS compare it."""
        return " ".join(self.public_openssh.split()[:2])


def generate_ed25519(comment: str) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private, f"{public.decode()} {comment}")


def _load_or_create(private_path: Path, comment: str) -> KeyPair:
    public_path = private_path.with_name(private_path.name + ".pub")
    if private_path.exists() and public_path.exists():
        return KeyPair(private_path.read_text(), public_path.read_text().strip())
    pair = generate_ed25519(comment)
    ensure_private_dir(private_path.parent)
    write_private(private_path, pair.private_openssh)
    write_private(public_path, pair.public_openssh + "\n", mode=0o644)
    return pair


def load_or_create_login_key(keys_dir: Path, name: str) -> tuple[KeyPair, Path]:
    path = keys_dir / name
    return _load_or_create(path, f"nbcloud-{name}"), path


def load_or_create_host_key(keys_dir: Path, name: str) -> KeyPair:
    return _load_or_create(keys_dir / f"{name}.hostkey", f"nbcloud-host-{name}")


def remove_keys(keys_dir: Path, name: str) -> None:
    for stem in (name, f"{name}.hostkey"):
        for suffix in ("", ".pub"):
            (keys_dir / f"{stem}{suffix}").unlink(missing_ok=True)
