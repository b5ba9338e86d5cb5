"""The detached tunnel process: read ``<name>.args.json``, load the resolver it names, run the supervisor.

``start_supervisor`` (:mod:`nbcloud.ssh.tunnel`) spawns ``python -m nbcloud.ssh.tunnel <args-file>``, whose
``__main__`` block calls :func:`main` here. The resolver comes in as ``module:function`` from the caller (the use
case that started the tunnel): this package never imports :mod:`nbcloud.ops`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .supervisor import TunnelSupervisor
from .tunnel import _ENTRY, Forward, ResolveResult

__all__ = ["load_resolver", "main", "run_from_args_file"]


def _unknown_resolver() -> ResolveResult:
    return ResolveResult("unknown", None)


def load_resolver(spec: str | None, name: str) -> Callable[[], ResolveResult]:
    """``module:function`` names a factory taking the instance name; None: no resolver (retry the known address)."""
    if spec is None:
        print("no resolver given: retrying forever", file=sys.stderr)
        return _unknown_resolver
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)(name)


def run_from_args_file(args_file: Path, resolver: str | None = None) -> int:
    raw = json.loads(Path(args_file).read_text())
    name = raw["name"]
    sup = TunnelSupervisor(
        name, raw["host_alias"], [Forward(**f) for f in raw["forwards"]], Path(raw["ssh_config"]),
        Path(raw["state_file"]), Path(raw["log_file"]), load_resolver(resolver or raw.get("resolver"), name),
        keepalive_interval=int(raw.get("keepalive_interval", 2)), keepalive_count=int(raw.get("keepalive_count", 2)),
        backoff_max=float(raw.get("backoff_max", 5.0)), connect_timeout=int(raw.get("connect_timeout", 5)),
        mode=str(raw.get("mode", "plain")), resume_window=float(raw.get("resume_window", 600.0)),
        hold_new=float(raw.get("hold_new", 60.0)))
    return sup.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_ENTRY}", description="Supervise one self-healing tunnel.")
    parser.add_argument("args_file", type=Path, help="<name>.args.json written by start_supervisor")
    parser.add_argument("--resolver", help="module:function, a factory f(name) -> Callable[[], ResolveResult]")
    ns = parser.parse_args(argv)
    return run_from_args_file(ns.args_file, ns.resolver)
