"""nbcloud: a Jupyter server on a cloud machine in one command.

The public API is small: the use cases in :mod:`nbcloud.ops` and the error tree in :mod:`nbcloud.errors`.
Importing this package is cheap; cloud and Jupyter libraries are imported only by what uses them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    CapacityError,
    ConflictError,
    CredentialsError,
    HostKeyError,
    NbcloudError,
    NotFoundError,
    QuotaError,
    RemoteError,
    SandboxError,
    TunnelError,
    UsageError,
)

__all__ = [
    "CapacityError",
    "ConflictError",
    "CredentialsError",
    "HostKeyError",
    "NbcloudError",
    "NotFoundError",
    "QuotaError",
    "RemoteError",
    "SandboxError",
    "TunnelError",
    "UsageError",
    "__version__",
]
