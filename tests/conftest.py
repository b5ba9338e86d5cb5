"""Shared test set-up: every test gets a private NBCLOUD_HOME; the sandbox plugin brings the emulated cloud."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

pytest_plugins = ["tests.sandbox_fixtures"] if (ROOT / "tests" / "sandbox_fixtures.py").exists() else []

ARTIFACTS = ROOT / "artifacts"


@pytest.fixture
def nbcloud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private world: state, keys, ssh config and the user's ~/.ssh/config all under tmp_path."""
    home = tmp_path / "nbhome"
    monkeypatch.setenv("NBCLOUD_HOME", str(home))
    monkeypatch.setenv("NBCLOUD_USER_SSH_CONFIG", str(tmp_path / "dot-ssh" / "config"))
    monkeypatch.setenv("NBCLOUD_QUIET", "1")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    return home


def pytest_configure(config: pytest.Config) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    os.environ.setdefault("NBCLOUD_QUIET", "1")
    # Each xdist worker takes its tunnels' local ports from its own range: a test that cuts a link releases its
    # ports for the outage, and a test on the other worker must not take them (it did: the gateway test's tunnel
    # came back to find 127.0.0.1:9888 forwarding to another test's instance).
    # NBCLOUD_TEST_PORT_BASE separates two test runs on one machine the same way.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = int(os.environ.get("NBCLOUD_TEST_PORT_BASE", "20000"))
    os.environ["NBCLOUD_LOCAL_PORT"] = str(base + 3000 * (int(worker) if worker.isdigit() else 0))


#: The test files that take longest, longest first (measured: a 2-worker run, 2026-12-01, after the sandbox deleted
#: disks off its reconciler and the money tests billed a 20-s minimum). `scripts/test` hands xdist whole files in
#: collection order (--dist loadfile --no-loadscope-reorder): starting the long ones first keeps both workers busy
#: to the end instead of leaving one alone with a three-minute file.
LONGEST_FIRST = (
    "tests/integration/test_inplace_volumes.py",
    "tests/integration/test_spot_volumes_images.py",
    "tests/integration/test_cluster.py",
    "tests/integration/test_launch_kills.py",
    "tests/integration/test_provisioning.py",
    "tests/integration/test_idle_activity.py",
    "tests/integration/test_connect.py",
    "tests/integration/test_cost_sandbox.py",
    "tests/integration/test_autostop.py",
    "tests/integration/test_sandbox_loopback.py",
    "tests/integration/test_gateway_sandbox.py",
    "tests/integration/test_resumable.py",
    "tests/integration/test_local_processes.py",
    "tests/integration/test_jupyter_service.py",
    "tests/integration/test_aws_failover.py",
    "tests/e2e/test_browser_gateway.py",
    "tests/e2e/test_browser_sandbox.py",
    "tests/integration/test_sandbox_os.py",
    "tests/integration/test_public_reissue.py",
    "tests/integration/test_ssh_provider.py",
    "tests/integration/test_cost_unseen.py",
    "tests/integration/test_resumable_sandbox.py",
    "tests/integration/test_tunnel.py",
    "tests/e2e/test_browser_durable.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest as collected
