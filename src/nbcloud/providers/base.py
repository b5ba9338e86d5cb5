"""The provider interface: the few operations nbcloud needs from a cloud, in two parts.

:class:`Machines` is what every provider does (``aws``, ``sandbox`` and ``ssh``: find a machine, wait on it, end it);
:class:`CloudResources` is what only a cloud does (make and power machines, key pairs, security groups, volumes,
snapshots, images). :class:`Provider` is both, the type ops/ is handed.

A provider is handed plain values and returns models; it never prints and never decides policy (that is
:mod:`nbcloud.ops`). ``aws`` implements it with boto3; ``sandbox`` is the same ``aws`` code pointed at the
emulated EC2 on this machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..models import ImageInfo, Instance, InstanceTypeInfo, Volume

if TYPE_CHECKING:
    from ..money.pricing import PriceTable

__all__ = ["CloudResources", "ClusterMachines", "IngressRule", "LaunchRequest", "Machines", "PriceSource", "Provider",
           "TaggedResource", "WorkerRequest", "manages_machines"]


@dataclass(frozen=True)
class IngressRule:
    port: int
    cidr: str
    description: str = ""


@dataclass(frozen=True)
class LaunchRequest:
    name: str
    launch_id: str
    instance_type: str
    image_id: str
    key_name: str
    security_group_id: str
    user_data: bytes
    disk_gb: int
    zone: str | None = None
    spot: bool = False
    max_price: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    #: tried in turn when ``instance_type`` has no capacity (or quota) in any zone: `up --fallback-types`
    fallback_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerRequest:
    """One cluster worker (`nbcloud cluster`): launched beside the notebook's instance, in its cluster's group."""


    client_token: str
    instance_type: str
    image_id: str
    key_name: str
    group_id: str
    user_data: bytes
    zone: str | None
    subnet_id: str | None
    spot: bool
    disk_gb: int
    tags: dict[str, str]



@dataclass(frozen=True)
class TaggedResource:
    kind: str  # instance | security-group | key-pair | volume | image | snapshot
    resource_id: str
    name: str | None
    launch_id: str | None
    state: str | None = None


class Machines(Protocol):
    """What every provider does, ``ssh`` included: the machines nbcloud knows under a name, found and waited on.

    ``ssh`` answers from the local store and a probe of the machine's sshd; the clouds from their API (tags).
    """

    @property
    def name(self) -> str: ...
    @property
    def region(self) -> str: ...
    #: environment the bootstrap needs on this provider's machines (the sandbox's local package cache)
    package_env: dict[str, str]
    #: False for a machine nbcloud did not make (``ssh``): it cannot be started, stopped or idle-stopped
    manages_machines: bool
    #: who logs in on the machines this provider makes, before one exists (the bootstrap writes that user's
    #: settings); a found machine says it itself (``Instance.user``, ``Instance.ssh_port``)
    login_user: str

    def check_access(self) -> None:
        """Fail fast (credentials, endpoint, missing address) before anything is made."""
    def find(self, name: str) -> Instance | None:
        """The machine called ``name`` (not terminated), or None."""
    def list_instances(self) -> list[Instance]:
        """Every machine of nbcloud's this provider knows, in any state but terminated."""
    def describe(self, instance_id: str) -> Instance | None:
        """One machine by id in any state, terminated included while the cloud still lists it (EC2: about an
        hour), or None (``ssh``: always None)."""
    def wait_running(self, instance_id: str, timeout: float) -> Instance:
        """The machine once it runs (with its address), or a RemoteError after ``timeout`` seconds."""
    def wait_gone(self, instance_id: str, state: str, timeout: float) -> None:
        """Return once the machine reached ``state`` (stopped, terminated)."""
    def terminate(self, instance_id: str) -> None:
        """End the machine (``ssh``: remove nbcloud's files from it; the machine stays)."""
    def tagged_resources(self, name: str | None = None) -> list[TaggedResource]:
        """Everything this provider holds for nbcloud (optionally for one name): the truth for orphan scans."""
    def delete_resource(self, resource: TaggedResource) -> None:
        """Delete one of :meth:`tagged_resources`."""
    def set_ingress(self, group_id: str, rules: Sequence[IngressRule]) -> bool:
        """Replace the firewall rules; False when there is no firewall of the provider's (``ssh``)."""
    def spot_price(self, instance_type: str, zone: str | None = None) -> float | None:
        """The spot $/h in force (no zone: the highest across the region's), None when there is no spot market."""
    def find_volume(self, volume_name: str) -> Volume | None:
        """The data volume called ``volume_name``, or None (``ssh``: always None)."""
    def list_volumes(self) -> list[Volume]: ...
    def list_snapshots(self) -> list[dict[str, Any]]: ...
    def list_images(self) -> list[dict[str, Any]]: ...


class CloudResources(Protocol):
    """What only a cloud does (``aws``, ``sandbox``): make, power and tag machines, and own key pairs, security groups,
    volumes, snapshots and images. ``ssh`` refuses each with a one-line UsageError (there is no cloud behind it)."""

    def caller_ip(self) -> str:
        """This machine's public address as the cloud sees it (the security group's source)."""
    def instance_type(self, name: str) -> InstanceTypeInfo:
        """Validate ``name`` and describe it (vCPUs, memory, GPUs, architecture)."""
    def image(self, ref: str) -> ImageInfo:
        """Resolve an image reference (id, alias, baked name) to one image."""
    def default_zone(self, instance_type: str | None = None) -> str:
        """A zone for a new data volume: one that offers ``instance_type``."""

    def import_key_pair(self, key_name: str, public_key: str, tags: dict[str, str]) -> None: ...
    def delete_key_pair(self, key_name: str) -> None: ...
    def create_security_group(self, group_name: str, rules: Sequence[IngressRule], tags: dict[str, str]) -> str:
        """A new group with ``rules``; returns its id."""
    def delete_security_group(self, group_id: str) -> None: ...

    def run_instance(self, request: LaunchRequest, progress: Callable[[str], None] | None = None) -> Instance:
        """Launch one machine (falling back through ``request.fallback_types`` and zones on capacity errors)."""
    def start(self, instance_id: str) -> None: ...
    def stop(self, instance_id: str) -> None: ...
    def set_name_tags(self, resource_ids: Sequence[str], tags: dict[str, str]) -> None:
        """Put nbcloud's tags on resources made without them (snapshots of an image, a renamed instance)."""

    def create_volume(self, size_gb: int, zone: str, tags: dict[str, str]) -> Volume: ...
    def attach_volume(self, volume_id: str, instance_id: str, device: str) -> None: ...
    def detach_volume(self, volume_id: str, instance_id: str) -> None: ...
    def delete_volume(self, volume_id: str) -> None: ...
    def create_volume_from_snapshot(self, snapshot_id: str, zone: str, tags: dict[str, str]) -> Volume: ...
    def snapshot_volume(self, volume_id: str, description: str, tags: dict[str, str]) -> str:
        """Start a snapshot of the volume; returns its id."""
    def delete_snapshot(self, snapshot_id: str) -> None: ...

    def create_image(self, instance_id: str, ami_name: str, tags: dict[str, str], *,
                     exclude_devices: Sequence[str] = (), timeout: float = 3600) -> str:
        """Bake the instance's root disk into an image (waits until it is available); returns its id."""
    def delete_image(self, image_id: str) -> list[str]:
        """Deregister the image and delete its snapshots; returns the snapshot ids deleted."""


class Provider(Machines, CloudResources, Protocol):
    """The whole interface ops/ is handed (``ctx.provider(name)``): a provider is Machines, and a cloud is also
    CloudResources. A cloud may also quote live prices: ``on_demand_price(type)`` (looked up with ``getattr``)."""


class PriceSource(Protocol):
    """A cloud whose live prices fill the price table (the registry's ``price_source``: `nbcloud prices refresh`)."""

    def refresh_prices(self, path: Path, regions: Sequence[str]) -> PriceTable:
        """Live on-demand and storage prices merged into the table in use and written to ``path``."""


class ClusterMachines(Protocol):
    """A cloud's calls for a cluster's workers and their security group (``providers.registry.cluster_machines``).
    Each takes the provider whose account it acts in; one without a cloud session refuses with a UsageError."""

    def create_cluster_group(self, provider: Any, name: str, ports: Sequence[tuple[int, int]], tags: dict[str, str],
                             vpc_id: str | None) -> str:
        """A group whose members reach each other on ``ports`` (and SSH) and which admits nothing else."""
    def delete_group(self, provider: Any, group_id: str) -> None: ...
    def cluster_groups(self, provider: Any, name: str) -> list[str]:
        """The groups tagged as ``name``'s cluster's."""
    def instance_groups(self, provider: Any, instance_id: str) -> list[str]: ...
    def set_instance_groups(self, provider: Any, instance_id: str, group_ids: Sequence[str]) -> None: ...
    def run_worker(self, provider: Any, request: WorkerRequest) -> Instance: ...
    def list_workers(self, provider: Any, name: str) -> list[Instance]:
        """Every live worker of the cluster, found by tag."""
    def subnet_of(self, provider: Any, instance_id: str) -> tuple[str | None, str | None]:
        """(subnet id, VPC id) of the instance."""
    def terminate(self, provider: Any, instance_ids: Sequence[str]) -> None: ...


def manages_machines(provider: object) -> bool:
    """The capability check ops code uses instead of comparing provider names; a provider that does not say
    (the cloud ones predate the attribute) powers its machines."""
    return bool(getattr(provider, "manages_machines", True))
