"""The provider for the sandbox: the aws provider pointed at moto, plus how the sandbox's instances are reached.

EC2 does not report a login user or an ssh port; on AWS they are ``ubuntu`` and 22, and so they are in the
sandbox's netns mode. In loopback mode (see loopback.py) sshd runs as the current user, possibly on a high port:
this subclass stamps that on every instance it returns, so the ssh config and ``up --json`` say the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from ...errors import UsageError
from ...models import Instance, Volume
from ..aws.provider import AwsProvider
from ..base import LaunchRequest

__all__ = ["SandboxProvider"]


@dataclass
class SandboxProvider(AwsProvider):
    login_user: str = "ubuntu"
    ssh_port: int = 22
    #: loopback mode: instances share the host's network, so each one's Jupyter listens on its own address
    jupyter_on_address: bool = False
    data_volumes: bool = True
    #: the emulator answers in milliseconds and has no rate limit: poll it often, so tests and demos stay fast
    poll_interval: float = 0.2

    def _reached(self, instance: Instance) -> Instance:
        jupyter_host = instance.host if self.jupyter_on_address and instance.host else instance.jupyter_host
        return replace(instance, user=self.login_user, ssh_port=self.ssh_port, jupyter_host=jupyter_host)

    def _refuse_volumes(self) -> None:
        if not self.data_volumes:
            raise UsageError("data volumes need the sandbox in netns mode: a loopback instance (no root) has no "
                             "mounts", "leave out --data-volume, or run the sandbox as root")

    def find_volume(self, volume_name: str) -> Volume | None:
        self._refuse_volumes()
        return super().find_volume(volume_name)

    def create_volume(self, size_gb: int, zone: str, tags: dict[str, str]) -> Volume:
        self._refuse_volumes()
        return super().create_volume(size_gb, zone, tags)

    def run_instance(self, request: LaunchRequest, progress: Callable[[str], None] | None = None) -> Instance:
        return self._reached(super().run_instance(request, progress))

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        return self._reached(super().wait_running(instance_id, timeout))

    def find(self, name: str) -> Instance | None:
        found = super().find(name)
        return self._reached(found) if found is not None else None

    def list_instances(self) -> list[Instance]:
        return [self._reached(i) for i in super().list_instances()]

    def prepare_packages(self, subdir: str, requirements: list[str], progress=None) -> None:  # type: ignore[no-untyped-def]
        """Wheels that only some instances install (a cluster engine's): a subdirectory of the sandbox's
        wheelhouse, downloaded on this machine the first time (instances have no index)."""
        import json
        from pathlib import Path

        from ...sandbox.client import default_dir
        from ...sandbox.wheelhouse import ensure_extra_wheels

        info = json.loads((default_dir() / "sandbox.json").read_text())
        if info.get("wheelhouse"):
            ensure_extra_wheels(Path(info["wheelhouse"]), subdir, requirements, progress)
