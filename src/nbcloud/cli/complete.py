"""Shell completion of instance names from the local store (no cloud call, nothing written)."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

__all__ = ["instance_names"]


def instance_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from ..config import paths
    from ..state import read_names

    return [CompletionItem(name) for name in read_names(paths().state_db) if name.startswith(incomplete)]
