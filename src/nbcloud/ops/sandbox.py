"""`nbcloud sandbox reset` as a use case: the emulated cloud goes, and with it every local trace of its instances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import paths

__all__ = ["reset_sandbox"]


def reset_sandbox(sandbox_dir: Path | None = None) -> dict[str, Any]:
    """Stop the tunnels and local labs of this machine's sandbox instances, reset the daemon, forget the instances.

    Only the sandbox this NBCLOUD_HOME's instances live in (the default directory) takes them along; resetting
    another directory touches nothing local. A home that no longer exists is not re-created.
    """
    from ..sandbox import client
    from .context import Context
    from .instances import stop_tunnel
    from .lifecycle import forget_gone

    directory = Path(sandbox_dir or client.default_dir()).resolve()
    ours = directory == client.default_dir().resolve() and paths().data_dir.is_dir()
    if not ours:
        return {**client.reset(directory), "forgotten": []}
    ctx = Context.create()
    names = [r.name for r in ctx.store.all() if r.provider == "sandbox"]
    for name in names:  # before the daemon goes: a tunnel left running would chase its instance
        stop_tunnel(ctx, name)
    result = client.reset(directory)
    for name in names:
        forget_gone(ctx, name)
    return {**result, "forgotten": names}
