"""Provider name → provider object: the only place that switches on a provider's name."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import SandboxError, UsageError

if TYPE_CHECKING:
    from .base import Provider

__all__ = ["HOST_PROVIDER", "PROVIDERS", "SandboxNotRunning", "adopts_hosts", "get_provider", "listing_provider"]


class SandboxNotRunning(SandboxError):
    """No sandbox daemon: its instances are gone with it (moto keeps them in memory)."""

PROVIDERS = ("aws", "sandbox", "ssh")
#: the provider `up --host` means when --provider is not given
HOST_PROVIDER = "ssh"


def adopts_hosts(name: str) -> bool:
    """Whether ``name`` is a provider for machines the user already has (`up --host`), not a cloud."""
    return name == "ssh"


def listing_provider(configured: str | None, used: Iterable[str], default: str) -> str:
    """The cloud a listing (volumes, images, orphans) asks when the user named none.

    The one the user configured; else the only cloud this machine's instances used (a machine that has only
    ever used the sandbox lists the sandbox's volumes instead of failing for want of an AWS region); else the
    default.
    """
    if configured:
        return configured
    clouds = {name for name in used if name in PROVIDERS and not adopts_hosts(name)}
    return clouds.pop() if len(clouds) == 1 else default


def get_provider(name: str, region: str | None = None, profile: str | None = None, *, start: bool = False) -> Provider:
    """``start``: start the sandbox when it is not running. Only `nbcloud sandbox start` means that: any other
    command, and above all a background process (a tunnel's resolver), would bring back a sandbox the user reset."""
    if name == "aws":
        from .aws.provider import AwsProvider
        from .aws.session import AwsSession

        return AwsProvider(AwsSession.create(region=region, profile=profile), label="aws")
    if name == "sandbox":
        from .aws.session import AwsSession
        from .sandbox import client as sandbox
        from .sandbox.provider import SandboxProvider

        info = sandbox.start() if start else sandbox.load_info()
        if info is None:
            raise SandboxNotRunning("the sandbox is not running", "start it with `nbcloud sandbox start`")
        session = AwsSession.create(
            region=region or info.region, endpoint_url=info.endpoint_url, access_key="testing", secret_key="testing"
        )
        return SandboxProvider(session, label="sandbox", checkip_url=f"{info.control_url}/checkip",
                               package_env=dict(info.bootstrap_env), login_user=info.login_user,
                               ssh_port=info.ssh_port, jupyter_on_address=info.jupyter_on_address,
                               data_volumes=info.data_volumes)
    if name == "ssh":
        from .ssh.provider import SshProvider

        return SshProvider()
    raise UsageError(f"unknown provider {name!r}", f"choose one of: {', '.join(PROVIDERS)}")
