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
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import Paths, ensure_private_dir, write_private
from ..errors import UsageError

__all__ = ["SshEntry", "ensure_include", "include_problem", "pin_host_key", "remove_entry", "render_entry",
           "unpin_host_key", "vscode_command", "write_entry"]

# For people (interactive ssh, VS Code Remote-SSH): a minute of stall before giving up. The tunnel supervisor puts
# its own 2 s x 2 on its ssh command line, which wins over these.
KEEPALIVE_INTERVAL = 15
KEEPALIVE_COUNT = 4


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


def vscode_command(alias: str, user: str) -> str:
    """VS Code on the instance through its Host block, opened in the login user's home."""
    home = "/root" if user == "root" else f"/home/{user}"
    return f"code --remote ssh-remote+{alias} {home}"


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
    Returns True when the file was changed. A symlinked config is edited where it points; when that file cannot
    be written, UsageError names the line to add by hand.
    """
    with _locked(p):
        return _ensure_include(p)


def _ensure_include(p: Paths) -> bool:
    line = f'Include "{p.ssh_config}"'
    link = p.user_ssh_config
    # Through a symlink (stow, home-manager, a dotfile repo): edit the file it points to, never replace the link.
    target = Path(os.path.realpath(link))
    if target == Path(os.path.realpath(p.ssh_config)):
        # Checked first (even when it holds the line already): it would include itself (ssh: "Too many recursive
        # configuration includes") and be overwritten with nbcloud's Host blocks: every ssh through it fails, and
        # `up` would wait out its whole SSH timeout.
        raise UsageError(f"the ssh config to add nbcloud's Include to ({link}) is nbcloud's own {p.ssh_config}",
                         "point NBCLOUD_USER_SSH_CONFIG at another file (your ssh config), or unset it")
    existing = target.read_text() if target.exists() else ""
    if any(ln.strip() == line for ln in existing.splitlines()):
        return False
    problem = include_problem(link, target)
    if problem:
        raise UsageError(f"cannot add nbcloud's Include to {link}: {problem}",
                         f"add this line at the top of {target} yourself, then retry: {line}")
    if not target.parent.exists():
        ensure_private_dir(target.parent)  # a new ~/.ssh is 0700; an existing one keeps the mode the user gave it
    if target.exists():
        backup = target.with_name(target.name + ".nbcloud-backup")
        if not backup.exists():
            shutil.copy2(target, backup)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o600
    write_private(target, f"# Added by nbcloud (ssh nb-NAME)\n{line}\n\n{existing}", mode=mode)
    return True


def include_problem(link: Path, target: Path) -> str | None:
    """Why the Include line cannot be written into ``target`` (the resolved ``link``), or None when it can.

    The file is replaced atomically by a sibling, so its directory must be writable as well as the file.
    """
    shown = f"{target}" + (f" (where {link} points)" if target != link else "")
    if target.exists() and not os.access(target, os.W_OK):
        return f"{shown} is not writable"
    directory = next((d for d in [target.parent, *target.parent.parents] if d.exists()), None)
    if directory is None or not os.access(directory, os.W_OK | os.X_OK):
        return f"{directory or target.parent} is not writable"
    return None
