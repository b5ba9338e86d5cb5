"""The use cases: each CLI command is one call into this package, returning a result object."""

from __future__ import annotations

from .billing import cost_report
from .context import Context
from .launch import DryRun, UpResult, dry_run, up
from .lifecycle import DownResult, InstanceView, down, orphans, refresh, start_instance, status, stop_instance
from .tunnels import ConnectResult, connect, disconnect, sync, tunnel_resolver

__all__ = [
    "ConnectResult",
    "Context",
    "DownResult",
    "DryRun",
    "InstanceView",
    "UpResult",
    "connect",
    "cost_report",
    "disconnect",
    "down",
    "dry_run",
    "orphans",
    "refresh",
    "start_instance",
    "status",
    "stop_instance",
    "sync",
    "tunnel_resolver",
    "up",
]
