"""The provider for the sandbox: the aws provider pointed at moto, plus how the sandbox's instances are reached.

EC2 does not report a login user or an ssh port; on AWS they are ``ubuntu`` and 22, and so they are in the
sandbox's netns mode. In loopback mode (see loopback.py) sshd runs as the current user, possibly on a high port:
this subclass stamps that on every instance it returns, so the ssh config and ``up --json`` say the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ...models import Instance
from ..aws.provider import AwsProvider
from ..base import LaunchRequest

__all__ = ["SandboxProvider"]


@dataclass
class SandboxProvider(AwsProvider):
    login_user: str = "ubuntu"
    ssh_port: int = 22

    def _reached(self, instance: Instance) -> Instance:
        return replace(instance, user=self.login_user, ssh_port=self.ssh_port)

    def run_instance(self, request: LaunchRequest) -> Instance:
        return self._reached(super().run_instance(request))

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        return self._reached(super().wait_running(instance_id, timeout))

    def find(self, name: str) -> Instance | None:
        found = super().find(name)
        return self._reached(found) if found is not None else None

    def list_instances(self) -> list[Instance]:
        return [self._reached(i) for i in super().list_instances()]
