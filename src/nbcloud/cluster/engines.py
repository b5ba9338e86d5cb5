"""The cluster engines nbcloud knows, by name (a table: one row an engine module)."""

from __future__ import annotations

from ..errors import UsageError
from .dask import DaskEngine
from .engine import Engine

__all__ = ["get_engine"]


def get_engine(name: str = "dask") -> Engine:
    if name == "dask":
        return DaskEngine()
    raise UsageError(f"unknown cluster engine {name!r}", "use dask")
