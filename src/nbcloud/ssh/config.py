"""nbcloud's own ssh config and pinned known_hosts, pulled into ~/.ssh/config with one Include line.

Each instance gets ``Host nb-NAME`` with ``HostKeyAlias nb-NAME``: the pinned host key is keyed on the alias,
not on the address, so a stop/start that changes the address needs only a HostName rewrite, never a new
"yes". Files are rewritten atomically; the user's config is backed up once before the Include is added.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import Paths, ensure_private_dir, write_private

__all__ = ["SshEntry", "ensure_include", "pin_host_key", "remove_entry", "render_entry", "unpin_host_key",
           "write_entry"]

KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 2


@dataclass(frozen=True)
class SshEntry:
    alias: str
    host: str
    user: str
    identity_file: Path
    known_hosts: Path
    port: int = 22


def render_entry(entry: SshEntry) -> str:
    return "\n".join([
        f"Host {entry.alias}",
        f"  HostName {entry.host}",
        f"  Port {entry.port}",
        f"  User {entry.user}",
        f"  IdentityFile \"{entry.identity_file}\"",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile \"{entry.known_hosts}\"",
        "  StrictHostKeyChecking yes",
        f"  HostKeyAlias {entry.alias}",
        "  UpdateHostKeys no",
        f"  ServerAliveInterval {KEEPALIVE_INTERVAL}",
        f"  ServerAliveCountMax {KEEPALIVE_COUNT}",
        "  ConnectTimeout 10",
        "  LogLevel ERROR",
        "",
    ])


_BLOCK = re.compile(r"^Host (\S+)\n(?:  .*\n|\n)*", re.MULTILINE)


def _blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0).rstrip("\n") + "\n" for m in _BLOCK.finditer(text)}


@contextmanager
def _locked(p: Paths) -> Iterator[None]:
    """Read-modify-write of the shared files under one lock: two `up`s at once must not drop an entry."""
    ensure_private_dir(p.data_dir)
    fd = os.open(p.data_dir / ".ssh-files.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_HEADER = "# Managed by nbcloud: one Host block per instance. Edits here are overwritten.\n\n"


def write_entry(p: Paths, entry: SshEntry) -> None:
    with _locked(p):
        ensure_private_dir(p.data_dir)
        blocks = _blocks(p.ssh_config.read_text()) if p.ssh_config.exists() else {}
        blocks[entry.alias] = render_entry(entry)
        write_private(p.ssh_config, _HEADER + "\n".join(blocks[k] for k in sorted(blocks)))


def remove_entry(p: Paths, alias: str) -> None:
    with _locked(p):
        if not p.ssh_config.exists():
            return
        blocks = _blocks(p.ssh_config.read_text())
        if blocks.pop(alias, None) is not None:
            write_private(p.ssh_config, _HEADER + "\n".join(blocks[k] for k in sorted(blocks)))


def pin_host_key(p: Paths, alias: str, public_blob: str) -> None:
    with _locked(p):
        lines = p.known_hosts.read_text().splitlines() if p.known_hosts.exists() else []
        kept = [line for line in lines if line.split(" ", 1)[0] != alias]
        write_private(p.known_hosts, "\n".join([*kept, f"{alias} {public_blob}"]) + "\n")


def unpin_host_key(p: Paths, alias: str) -> None:
    with _locked(p):
        if p.known_hosts.exists():
            kept = [ln for ln in p.known_hosts.read_text().splitlines() if ln.split(" ", 1)[0] != alias]
            write_private(p.known_hosts, "\n".join(kept) + ("\n" if kept else ""))


def ensure_include(p: Paths) -> bool:
    """Add ``Include <nbcloud ssh_config>`` at the top of the user's ssh config once (backing it up first).

    At the top because an Include below a ``Host`` line would only apply inside that block.
    Returns True when the file was changed.
    """
    with _locked(p):
        return _ensure_include(p)


def _ensure_include(p: Paths) -> bool:
    user_config = p.user_ssh_config
    line = f'Include "{p.ssh_config}"'
    existing = user_config.read_text() if user_config.exists() else ""
    if any(ln.strip() == line for ln in existing.splitlines()):
        return False
    ensure_private_dir(user_config.parent)
    if user_config.exists():
        backup = user_config.with_name(user_config.name + ".nbcloud-backup")
        if not backup.exists():
            shutil.copy2(user_config, backup)
    write_private(user_config, f"# Added by nbcloud (ssh nb-NAME)\n{line}\n\n{existing}")
    return True
