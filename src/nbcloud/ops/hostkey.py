"""Pin a host key the instance made itself, in place of the one `up` handed it in user-data (remote/hostkey.py)."""

from __future__ import annotations

from ..errors import RemoteError
from ..ssh import config as ssh_config
from ..ssh import session
from .context import Context

__all__ = ["rotate_host_key"]


def rotate_host_key(ctx: Context, name: str, timeout: float = 120) -> str:
    """Over the pinned session: the instance makes a new key; it is pinned; the new key must answer. Returns it."""
    from ..remote.hostkey import parse_rotated_key, rotate_host_key_command

    alias = f"nb-{name}"
    done = session.run(ctx.paths.ssh_config, alias, rotate_host_key_command(), timeout=timeout)
    key = parse_rotated_key(done.stdout)
    if key is None:
        raise RemoteError(f"{name} did not report its new host key",
                          f"`ssh {alias}` still works with the launch key; `nbcloud down {name}` and `up` again")
    ssh_config.pin_host_key(ctx.paths, alias, key)
    # sshd re-executes on the reload: the first attempts may be refused for a moment, a wrong key fails at once
    session.wait_ssh(ctx.paths.ssh_config, alias, timeout=timeout)
    return key
