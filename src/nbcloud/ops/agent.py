"""Talking to the on-instance agent: its settings file and its state, over ssh."""

from __future__ import annotations

from typing import Any

from ..models import parse_duration
from ..ssh import session
from .context import Context

__all__ = ["set_autostop"]


def set_autostop(ctx: Context, name: str, duration: str) -> dict[str, Any]:
    from ..remote.secrets import autostop_update_script

    seconds = parse_duration(duration)
    record = ctx.record(name)
    spec = dict(record.spec or {}) | {"idle_stop_seconds": seconds}
    script, stdin = autostop_update_script(seconds)
    session.run(ctx.paths.ssh_config, f"nb-{name}", script, input=stdin, timeout=30)
    ctx.store.update(name, spec=spec)
    return {"name": name, "idle_stop_seconds": seconds, "idle_stop": duration if seconds else "off"}
