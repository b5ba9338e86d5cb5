"""The ``ssh`` provider: a machine the user already has and reaches by ssh.

No cloud behind it: no tags, so what nbcloud knows about adopted machines lives in the local store (the records
with ``provider = "ssh"``); nbcloud cannot power such a machine on or off (``manages_machines = False``) and makes no
key pairs, security groups, volumes or images. The cloud-only methods of :class:`~nbcloud.providers.base.Provider`
raise a one-line :class:`UsageError`; the rest answer from the store plus a TCP probe of the machine's sshd.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...config import paths
from ...errors import RemoteError, UsageError
from ...models import ImageInfo, Instance, InstanceTypeInfo, Volume
from ...remote.spec import LOGIN_USER
from ...state import Record, Store, open_store
from ..base import IngressRule, LaunchRequest, TaggedResource

__all__ = ["BOOTSTRAP_ENV", "HOST_TYPE", "REGION", "SshProvider"]

REGION = "-"  # no regions: one provider object serves every adopted machine
HOST_TYPE = "ssh-host"  # the record's instance type: no price is known for it, so no cost is shown
#: JSON object of environment for the bootstrap on adopted machines (e.g. an offline wheel index); the sandbox-based
#: tests set it to the sandbox's package cache, as a user with an air-gapped machine would point at a mirror
BOOTSTRAP_ENV = "NBCLOUD_SSH_BOOTSTRAP_ENV"
_PROBE_TIMEOUT = 2.0


def _no_cloud(what: str) -> UsageError:
    return UsageError(f"the ssh provider has no cloud: it cannot {what}",
                      "that needs --provider aws (or sandbox); an adopted machine is yours to manage")


def _bootstrap_env() -> dict[str, str]:
    text = os.environ.get(BOOTSTRAP_ENV, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(f"{BOOTSTRAP_ENV} is not a JSON object of strings",
                         'e.g. {"UV_INDEX_URL": "https://mirror/simple"}, or unset it')
    return value


class SshProvider:
    name = "ssh"
    region = REGION
    manages_machines = False
    login_user = LOGIN_USER  # base.Provider; an adopted host's own user is its record's (`up --host USER@HOST`)

    def __init__(self, label: str = "ssh") -> None:
        self.name = label
        self.package_env = _bootstrap_env()
        self._store: Store | None = None

    # --- the store is the truth here ------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(paths())
        return self._store

    def _records(self) -> list[Record]:
        return [r for r in self.store.all() if r.provider == self.name]

    def _record_by_id(self, instance_id: str) -> Record:
        for record in self._records():
            if record.instance_id == instance_id:
                return record
        raise UsageError(f"no adopted machine {instance_id!r} on this machine", "`nbcloud status` lists them")

    @staticmethod
    def _port(record: Record) -> int:
        return int((record.spec or {}).get("ssh_port", 22))

    def _probe(self, record: Record) -> str:
        """'running' when sshd accepts a TCP connection, else 'unreachable' (we cannot tell off from far away)."""
        try:
            with socket.create_connection((record.host or "", self._port(record)), timeout=_PROBE_TIMEOUT):
                return "running"
        except OSError:
            return "unreachable"

    def _instance(self, record: Record, state: str) -> Instance:
        return Instance(name=record.name, instance_id=record.instance_id or record.name, state=state,
                        instance_type=HOST_TYPE, region=self.region, provider=self.name, host=record.host,
                        user=record.user, launch_id=record.launch_id, tags={"nbcloud:name": record.name})

    # --- what works ---------------------------------------------------------------------------------------------

    def check_access(self) -> None:
        # `up NAME --provider ssh` without --host reaches here (launch.up asks the provider first): say what is missing
        raise UsageError("--provider ssh adopts a machine you already have and needs its address",
                         "nbcloud up NAME --provider ssh --host [user@]HOST[:PORT] [--identity-file KEY]")

    def find(self, name: str) -> Instance | None:
        record = self.store.get(name)
        if record is None or record.provider != self.name:
            return None
        return self._instance(record, self._probe(record))

    def describe(self, instance_id: str) -> Instance | None:
        return None  # a machine nbcloud did not make: no cloud keeps its history

    def list_instances(self) -> list[Instance]:
        records = self._records()
        if not records:
            return []
        with ThreadPoolExecutor(max_workers=8) as pool:  # probes in parallel: status stays ~2 s worst case
            states = list(pool.map(self._probe, records))
        return [self._instance(r, s) for r, s in zip(records, states, strict=True)]

    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        record = self._record_by_id(instance_id)
        instance = self._instance(record, self._probe(record))
        if instance.state != "running":
            raise RemoteError(f"{record.host}:{self._port(record)} does not answer", "turn the machine on yourself")
        return instance

    def wait_gone(self, instance_id: str, state: str, timeout: float) -> None:
        return None  # terminate() returns once the host is clean: nothing to wait for

    def terminate(self, instance_id: str) -> None:
        """Not a termination: remove nbcloud's services and files from the machine (the machine itself stays)."""
        from ...remote.adopted import uninstall_script
        from ...ssh import session

        record = self._record_by_id(instance_id)
        result = session.run(paths().ssh_config, f"nb-{record.name}", uninstall_script(record.name, record.user),
                             timeout=120, check=False)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RemoteError(f"could not remove nbcloud from {record.host}: {detail}",
                              f"check `ssh nb-{record.name}` works; `nbcloud down {record.name} --forget` only "
                              "forgets it here")

    def tagged_resources(self, name: str | None = None) -> list[TaggedResource]:
        return [TaggedResource("instance", r.instance_id or r.name, r.name, r.launch_id, r.state)
                for r in self._records() if name is None or r.name == name]

    def delete_resource(self, resource: TaggedResource) -> None:
        if resource.kind == "instance":
            self.terminate(resource.resource_id)

    def set_ingress(self, group_id: str, rules: Sequence[IngressRule]) -> bool:
        return False  # no security groups: the machine's own firewall is the user's

    def spot_price(self, instance_type: str, zone: str | None = None) -> float | None:
        return None

    def find_volume(self, volume_name: str) -> Volume | None:
        return None

    def list_volumes(self) -> list[Volume]:
        return []

    def list_snapshots(self) -> list[dict[str, Any]]:
        return []

    def list_images(self) -> list[dict[str, Any]]:
        return []

    # --- cloud-only: a clear refusal --------------------------------------------------------------------------------

    def start(self, instance_id: str) -> None:
        raise _no_cloud("power machines on")

    def stop(self, instance_id: str) -> None:
        raise _no_cloud("power machines off")

    def caller_ip(self) -> str:
        raise _no_cloud("open firewall rules")

    def instance_type(self, name: str) -> InstanceTypeInfo:
        raise _no_cloud("choose an instance type")

    def image(self, ref: str) -> ImageInfo:
        raise _no_cloud("choose a machine image")

    def default_zone(self, instance_type: str | None = None) -> str:
        raise _no_cloud("choose an availability zone")

    def import_key_pair(self, key_name: str, public_key: str, tags: dict[str, str]) -> None:
        raise _no_cloud("import key pairs (your own key is used)")

    def delete_key_pair(self, key_name: str) -> None:
        raise _no_cloud("delete key pairs")

    def create_security_group(self, group_name: str, rules: Sequence[IngressRule], tags: dict[str, str]) -> str:
        raise _no_cloud("make security groups")

    def delete_security_group(self, group_id: str) -> None:
        raise _no_cloud("delete security groups")

    def run_instance(self, request: LaunchRequest, progress: object = None) -> Instance:
        raise _no_cloud("launch instances")

    def set_name_tags(self, resource_ids: Sequence[str], tags: dict[str, str]) -> None:
        raise _no_cloud("tag resources")

    def create_volume(self, size_gb: int, zone: str, tags: dict[str, str]) -> Volume:
        raise _no_cloud("make data volumes")

    def attach_volume(self, volume_id: str, instance_id: str, device: str) -> None:
        raise _no_cloud("attach data volumes")

    def detach_volume(self, volume_id: str, instance_id: str) -> None:
        raise _no_cloud("detach data volumes")

    def delete_volume(self, volume_id: str) -> None:
        raise _no_cloud("delete data volumes")

    def create_volume_from_snapshot(self, snapshot_id: str, zone: str, tags: dict[str, str]) -> Volume:
        raise _no_cloud("restore snapshots")

    def snapshot_volume(self, volume_id: str, description: str, tags: dict[str, str]) -> str:
        raise _no_cloud("snapshot volumes")

    def delete_snapshot(self, snapshot_id: str) -> None:
        raise _no_cloud("delete snapshots")

    def create_image(self, instance_id: str, ami_name: str, tags: dict[str, str], *,
                     exclude_devices: Sequence[str] = (), timeout: float = 3600) -> str:
        raise _no_cloud("bake images")

    def delete_image(self, image_id: str) -> list[str]:
        raise _no_cloud("delete images")
