"""Integration fixtures: a private nbcloud world on the session's sandbox, torn down even when a test fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import World, world_env

__all__ = ["World", "world"]


@pytest.fixture
def world(sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key, value in world_env(tmp_path, sandbox).items():
        monkeypatch.setenv(key, value)
    w = World.under(tmp_path, sandbox)
    yield w
    w.down_all()
