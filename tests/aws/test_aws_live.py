"""Against a real AWS account: opt-in only, never in CI.

Run with ``NBCLOUD_AWS_TESTS=1 pytest tests/aws`` and credentials boto3 can resolve (``aws configure``,
``AWS_PROFILE``, ``AWS_ACCESS_KEY_ID``…); ``NBCLOUD_AWS_TEST_REGION`` picks the region (default: your profile's).
The lifecycle test launches one t3.micro (a few cents) and removes everything it made, also when it fails.
Without the opt-in every test here is skipped at collection with the reason; no fixture runs, no AWS call is made.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

OPT_IN = "NBCLOUD_AWS_TESTS"
REGION_ENV = "NBCLOUD_AWS_TEST_REGION"


def aws_skip_reason() -> str | None:
    """Why the real-AWS tests do not run here, or None when they may. Credentials are looked up only after the
    opt-in, so a default run makes no boto3 call at all (no IMDS probe either)."""
    if os.environ.get(OPT_IN) != "1":
        return (f"real-AWS tests are opt-in: set {OPT_IN}=1 with AWS credentials to run them "
                "(they launch a t3.micro; see README 'Tests against real AWS')")
    try:
        import boto3
    except ImportError:
        return f"{OPT_IN}=1 but boto3 is not installed (pip install -e '.[dev]')"
    if boto3.Session().get_credentials() is None:
        return (f"{OPT_IN}=1 but no AWS credentials resolve via boto3 "
                "(aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    return None


_REASON = aws_skip_reason()
pytestmark = [pytest.mark.aws, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _region_args() -> list[str]:
    region = os.environ.get(REGION_ENV)
    return ["--region", region] if region else []


class Cli:
    """`nbcloud` in a private NBCLOUD_HOME and ~/.ssh/config, with the caller's AWS credentials."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "nbhome"
        self.user_ssh_config = tmp / "dot-ssh" / "config"
        self.env = dict(os.environ) | {"NBCLOUD_HOME": str(self.home), "NBCLOUD_QUIET": "1",
                                       "NBCLOUD_USER_SSH_CONFIG": str(self.user_ssh_config)}

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"nbcloud {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.run(*args, "--json", **kwargs).stdout)

    def ssh(self, alias: str, command: str = "true") -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", "-F", str(self.user_ssh_config), "-o", "BatchMode=yes", alias, command],
                              capture_output=True, text=True, timeout=60)


@pytest.fixture
def provider() -> Any:
    from nbcloud.providers.registry import get_provider

    return get_provider("aws", os.environ.get(REGION_ENV))


@pytest.fixture
def launched(tmp_path: Path, provider: Any) -> Iterator[tuple[Cli, str]]:
    cli = Cli(tmp_path)
    name = f"nbtest-{uuid.uuid4().hex[:8]}"
    try:
        yield cli, name
    finally:
        # whatever happened: take it down, then make sure nothing tagged with the name is left
        cli.run("down", name, "--delete-data", "--yes", check=False)
        leftovers = [r for r in provider.tagged_resources(name) if r.state != "terminated"]
        for resource in leftovers:
            provider.delete_resource(resource)


def test_read_only_instance_type_and_image_lookup(provider: Any) -> None:
    """No resource is made: DescribeInstanceTypes and the SSM public parameter behind `--image ubuntu`."""
    from nbcloud.errors import UsageError

    provider.check_access()
    micro = provider.instance_type("t3.micro")
    assert micro.vcpus == 2 and micro.gpus == 0 and micro.memory_mib == 1024
    with pytest.raises(UsageError) as bogus:
        provider.instance_type("t9.bogus")
    assert "t9.bogus" in bogus.value.one_line() and "\n" not in bogus.value.one_line()
    image = provider.image("ubuntu")
    assert image.image_id.startswith("ami-")


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_t3_micro_up_ssh_status_stop_start_down(launched: tuple[Cli, str], provider: Any) -> None:
    cli, name = launched
    up = cli.json("up", name, "--provider", "aws", *_region_args(), "-t", "t3.micro", "--idle-stop", "off",
                  "--no-connect", timeout=1500)
    assert up["state"] == "running" and up["instance_type"] == "t3.micro"
    assert cli.ssh(f"nb-{name}").returncode == 0

    view = cli.json("status", name)
    assert view["state"] == "running" and view["host"] and view["provider"] == "aws"

    stopped = cli.json("stop", name)
    assert stopped["state"] == "stopped" and stopped["still_billing"], "the root disk bills while stopped"
    assert cli.json("status", name)["state"] == "stopped"
    started = cli.json("start", name, timeout=1200)
    assert started["state"] == "running"
    assert cli.ssh(f"nb-{name}").returncode == 0, "the ssh entry follows the new address, the host key still pins"

    down = cli.json("down", name, "--yes")
    assert any(item.startswith("instance ") for item in down["deleted"])
    # zero orphans: the tag scan (the truth) finds nothing alive for this name
    assert [r for r in provider.tagged_resources(name) if r.state != "terminated"] == []
    orphans = cli.json("doctor", "--orphans", "--provider", "aws", *_region_args())
    assert all(o["name"] != name for o in orphans["orphans"])
