"""pytest plugin: the sandbox cloud for a test session (``pytest_plugins = ["tests.sandbox_fixtures"]``).

``sandbox`` (session) starts a sandbox in a temporary directory on its own subnet (never the developer's
10.200.0.0/16) and always resets it at the end, also when tests fail. ``sandbox_ec2`` / ``sandbox_client`` give
boto3 clients pointed at it with dummy credentials.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# tried in order: a subnet another live sandbox holds (e.g. a parallel test run) is skipped
TEST_SUBNETS = tuple(f"10.{n}.0.0/16" for n in (201, 211, 221, 231, 202, 212, 222, 232, 203, 213))


def sandbox_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the sandbox needs root (network namespaces, veth, routes)"
    if not os.path.exists("/usr/sbin/sshd"):
        return "the sandbox needs OpenSSH's sshd (apt-get install -y openssh-server)"
    missing = [t for t in ("ip", "nft", "unshare", "ssh") if shutil.which(t) is None]
    if missing:
        return f"the sandbox needs {', '.join(missing)}"
    try:
        import moto  # noqa: F401
    except ImportError:
        return "the sandbox needs moto (pip install 'nbcloud[sandbox]')"
    return None


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = sandbox_skip_reason()
    if reason:
        pytest.skip(reason)
    from nbcloud.sandbox import client

    directory = tmp_path_factory.mktemp("sandbox")
    wanted = os.environ.get("NBCLOUD_TEST_SANDBOX_SUBNET")
    try:
        # a comma-separated list: each xdist worker takes the first one free
        yield start_on_a_free_subnet(directory, tuple(s.strip() for s in wanted.split(",")) if wanted else TEST_SUBNETS)
    finally:
        client.reset(directory)


def start_on_a_free_subnet(directory: Any, subnets: tuple[str, ...]) -> Any:
    """Start a sandbox on the first subnet no other live sandbox holds (a parallel test run may); else skip."""
    from nbcloud.errors import SandboxError
    from nbcloud.sandbox import client

    for subnet in subnets:
        try:
            return client.start(directory, subnet=subnet)
        except SandboxError as exc:
            if "used by another sandbox" not in str(exc):
                raise
    pytest.skip(f"every test subnet ({', '.join(subnets)}) is held by another sandbox")


@pytest.fixture
def sandbox_client(sandbox: Any) -> Callable[[str], Any]:
    """``sandbox_client("ssm")``: a boto3 client for the sandbox (dummy credentials, us-east-1)."""
    from tests.helpers import sandbox_boto

    return lambda service: sandbox_boto(sandbox, service)


@pytest.fixture
def sandbox_ec2(sandbox_client: Callable[[str], Any]) -> Any:
    return sandbox_client("ec2")
