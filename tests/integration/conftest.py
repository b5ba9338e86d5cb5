"""Integration fixtures: a private nbcloud world on the session's sandbox, torn down even when a test fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class World:
    """One test's nbcloud: its own NBCLOUD_HOME and ~/.ssh/config, the shared sandbox cloud."""

    home: Path
    user_ssh_config: Path
    sandbox: Any
    env: dict[str, str]
    names: set[str] = field(default_factory=set)

    def nb(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"nbcloud {' '.join(args)} failed ({done.returncode}):\n{done.stderr}\n{done.stdout}")
        return done

    def nb_json(self, *args: str, **kwargs: Any) -> Any:
        return json.loads(self.nb(*args, "--json", **kwargs).stdout)

    def up(self, name: str, *extra: str) -> dict[str, Any]:
        self.names.add(name)
        return self.nb_json("up", name, "--provider", "sandbox", "--no-connect", *extra)

    def ssh(self, alias: str, command: str = "true", timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Plain OpenSSH through the user's ~/.ssh/config, as a user would type it."""
        return subprocess.run(["ssh", "-F", str(self.user_ssh_config), "-o", "BatchMode=yes", alias, command],
                              capture_output=True, text=True, timeout=timeout)

    def ec2(self) -> Any:
        import boto3

        return boto3.client("ec2", endpoint_url=self.sandbox.endpoint_url, region_name=self.sandbox.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def tagged(self, name: str) -> list[Any]:
        from nbcloud.providers.aws.provider import AwsProvider
        from nbcloud.providers.aws.session import AwsSession

        session = AwsSession.create(region=self.sandbox.region, endpoint_url=self.sandbox.endpoint_url,
                                    access_key="testing", secret_key="testing")
        return AwsProvider(session, label="sandbox").tagged_resources(name)


@pytest.fixture
def world(sandbox: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    home = tmp_path / "nbhome"
    user_ssh_config = tmp_path / "dot-ssh" / "config"
    values = {"NBCLOUD_HOME": str(home), "NBCLOUD_USER_SSH_CONFIG": str(user_ssh_config),
              "NBCLOUD_SANDBOX_DIR": str(sandbox.sandbox_dir), "NBCLOUD_QUIET": "1"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ) | values
    w = World(home, user_ssh_config, sandbox, env)
    yield w
    # Tear down whatever the test made, even when it failed half-way.
    for name in sorted(w.names):
        w.nb("down", name, "--delete-data", "--yes", check=False, timeout=300)
