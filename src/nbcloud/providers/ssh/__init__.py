"""The ``ssh`` provider: Jupyter on a machine the user already reaches by ssh (no cloud, no tags)."""

from __future__ import annotations

from .provider import SshProvider

__all__ = ["SshProvider"]
