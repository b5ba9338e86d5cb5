"""Provider name → provider object: a table, the only place that knows the providers by name.

The CLI reads its `--provider` choices from it (:func:`provider_names`, :func:`cloud_names`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ..errors import SandboxError, UsageError

if TYPE_CHECKING:
    from .base import ClusterMachines, PriceSource, Provider

__all__ = ["HOST_PROVIDER", "PRICES_PROVIDER", "PROVIDERS", "ProviderEntry", "SandboxNotRunning", "adopts_hosts",
           "cloud_names", "cluster_machines", "get_provider", "listing_provider", "price_source", "provider_names",
           "register"]


class SandboxNotRunning(SandboxError):
    """No sandbox daemon: its instances are gone with it (moto keeps them in memory)."""


@dataclass(frozen=True)
class ProviderEntry:
    """One row of the table: how to make the provider, and what kind it is (the CLI's choices come from here)."""

    name: str
    #: ``(region, profile, start) -> Provider``; imports its provider's code only when called (boto3 is slow to load)
    make: Callable[[str | None, str | None, bool], Provider]
    #: machines the user already has (`up --host`), not a cloud: no volumes, images, orphans or power
    adopts_hosts: bool = False


_TABLE: dict[str, ProviderEntry] = {}


def register(entry: ProviderEntry) -> None:
    """Add (or replace) a provider; the table's order is the order of the CLI's choices."""
    _TABLE[entry.name] = entry


def provider_names() -> tuple[str, ...]:
    """Every provider `--provider` accepts."""
    return tuple(_TABLE)


def cloud_names() -> tuple[str, ...]:
    """The providers with cloud resources of their own (volumes, images): `--provider` of the storage commands."""
    return tuple(name for name, entry in _TABLE.items() if not entry.adopts_hosts)


def adopts_hosts(name: str) -> bool:
    """Whether ``name`` is a provider for machines the user already has (`up --host`), not a cloud."""
    entry = _TABLE.get(name)
    return entry is not None and entry.adopts_hosts


def listing_provider(configured: str | None, used: Iterable[str], default: str) -> str:
    """The cloud a listing (volumes, images, orphans) asks when the user named none.

    The one the user configured; else the only cloud this machine's instances used (a machine that has only
    ever used the sandbox lists the sandbox's volumes instead of failing for want of an AWS region); else the
    default.
    """
    if configured:
        return configured
    clouds = {name for name in used if name in cloud_names()}
    return clouds.pop() if len(clouds) == 1 else default


def get_provider(name: str, region: str | None = None, profile: str | None = None, *, start: bool = False) -> Provider:
    """``start``: start the sandbox when it is not running. Only `nbcloud sandbox start` means that: any other
    command, and above all a background process (a tunnel's resolver), would bring back a sandbox the user reset."""
    entry = _TABLE.get(name)
    if entry is None:
        raise UsageError(f"unknown provider {name!r}", f"choose one of: {', '.join(PROVIDERS)}")
    return entry.make(region, profile, start)


# --- the providers nbcloud ships: each row imports its code only when a provider is made ---------------------------

def _aws(region: str | None, profile: str | None, start: bool) -> Provider:
    from .aws.provider import AwsProvider
    from .aws.session import AwsSession

    return AwsProvider(AwsSession.create(region=region, profile=profile), label="aws")


def _sandbox(region: str | None, profile: str | None, start: bool) -> Provider:
    from ..sandbox import client as sandbox
    from .aws.session import AwsSession
    from .sandbox.provider import SandboxProvider

    info = sandbox.start() if start else sandbox.load_info()
    if info is None:
        raise SandboxNotRunning("the sandbox is not running", "start it with `nbcloud sandbox start`")
    session = AwsSession.create(
        region=region or info.region, endpoint_url=info.endpoint_url,
        access_key=sandbox.CREDENTIALS["AWS_ACCESS_KEY_ID"], secret_key=sandbox.CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return SandboxProvider(session, label="sandbox", checkip_url=f"{info.control_url}/checkip",
                           package_env=dict(info.bootstrap_env), login_user=info.login_user,
                           ssh_port=info.ssh_port, jupyter_on_address=info.jupyter_on_address,
                           data_volumes=info.data_volumes)


def _ssh(region: str | None, profile: str | None, start: bool) -> Provider:
    from .ssh.provider import SshProvider

    return SshProvider()


register(ProviderEntry("aws", _aws))
register(ProviderEntry("sandbox", _sandbox))
register(ProviderEntry("ssh", _ssh, adopts_hosts=True))

#: every provider's name, in the table's order (what `--provider` offers)
PROVIDERS = provider_names()
#: the provider `up --host` means when --provider is not given
HOST_PROVIDER = "ssh"
#: the cloud whose prices the price table holds (`nbcloud prices refresh` asks it)
PRICES_PROVIDER = "aws"


def price_source(profile: str | None) -> PriceSource:
    """The provider `nbcloud prices refresh` reads live prices from (its ``refresh_prices``). The AWS Price List
    API is global: the session's region only has to exist, so it is fixed rather than asked of the user's config."""
    source = get_provider(PRICES_PROVIDER, region="us-east-1", profile=profile)
    return cast("PriceSource", source)


def cluster_machines(provider: Provider) -> ClusterMachines:
    """The calls a cluster's workers need from ``provider``'s cloud: the EC2 ones for aws and the sandbox (the
    same code pointed at moto); they refuse a provider without a cloud session (``ssh``)."""
    from .aws import cluster

    return cast("ClusterMachines", cluster)
