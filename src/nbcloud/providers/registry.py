"""Provider name → provider object: the only place that switches on a provider's name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Provider

__all__ = ["PROVIDERS", "get_provider"]

PROVIDERS = ("aws", "sandbox")


def get_provider(name: str, region: str | None = None, profile: str | None = None, *, start: bool = True) -> Provider:
    if name == "aws":
        from .aws.provider import AwsProvider
        from .aws.session import AwsSession

        return AwsProvider(AwsSession.create(region=region, profile=profile), label="aws")
    if name == "sandbox":
        from .aws.provider import AwsProvider
        from .aws.session import AwsSession
        from .sandbox import client as sandbox

        info = sandbox.start() if start else sandbox.load_info()
        if info is None:
            from ..errors import SandboxError

            raise SandboxError("the sandbox is not running", "start it with `nbcloud sandbox start`")
        session = AwsSession.create(
            region=region or info.region, endpoint_url=info.endpoint_url, access_key="testing", secret_key="testing"
        )
        return AwsProvider(session, label="sandbox", checkip_url=f"{info.control_url}/checkip",
                           package_env=dict(info.bootstrap_env))
    if name == "ssh":
        raise UsageError("the `ssh` provider (an existing machine) is not available yet",
                         "use `--provider aws` or `--provider sandbox`")
    raise UsageError(f"unknown provider {name!r}", f"choose one of: {', '.join(PROVIDERS)}")
