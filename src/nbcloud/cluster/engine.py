"""What a distributed engine must say for nbcloud to run it: packages, ports, files and units (pure values).

Dask is the one engine (dask.py, listed in engines.py); Ray would be a second module behind the same small
interface. The ops code
(ops/cluster.py) launches machines, moves files and waits; it never knows which engine it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .certs import ClusterCerts, Identity

__all__ = ["CERT_DIR", "Engine", "FileSpec", "Layout"]

#: the per-instance directory of a cluster's keys and certificates, below the login user's home (0700)
CERT_DIR = ".config/nbcloud/cluster"


@dataclass(frozen=True)
class FileSpec:
    path: str
    mode: int
    content: str
    owner: str | None = None  # the login user for files in its home; None: root


@dataclass(frozen=True)
class Layout:
    """Where the cluster lives: rendered into configs and units."""

    name: str
    scheduler_ip: str
    login_user: str = "ubuntu"
    worker_threads: int = 1
    idle_minutes: int = 15

    @property
    def home(self) -> str:
        return f"/home/{self.login_user}"

    @property
    def cert_dir(self) -> str:
        return f"{self.home}/{CERT_DIR}"


class Engine(Protocol):
    name: str
    scheduler_port: int
    dashboard_port: int
    worker_ports: tuple[int, int]  # inclusive range every worker listens in (the group admits only these)

    def requirements(self) -> tuple[str, ...]: ...
    def address(self, layout: Layout) -> str: ...
    def scheduler_files(self, layout: Layout, certs: ClusterCerts) -> list[FileSpec]: ...
    def worker_files(self, layout: Layout, ca_cert_pem: str, worker: Identity) -> list[FileSpec]: ...
    def scheduler_unit(self, layout: Layout) -> tuple[str, str]: ...
    def worker_units(self, layout: Layout) -> dict[str, str]: ...
    def worker_extra_files(self) -> dict[str, str]: ...
    def notice_watcher(self) -> str: ...
    def probe(self, expected: int, timeout: float, hosts: tuple[str, ...] = ()) -> str: ...
