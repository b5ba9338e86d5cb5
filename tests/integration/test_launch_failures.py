"""Issue 14: a failed bootstrap keeps its log and says why; `up --keep-on-failure` keeps the instance to debug;
a lost RunInstances answer makes one instance, not two (ClientToken)."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sandbox]


def test_failed_bootstrap_shows_its_cause_and_keeps_its_log(world) -> None:
    world.names.add("bad8")
    done = world.nb("up", "bad8", "--provider", "sandbox", "--no-connect", "--python-packages",
                    "no-such-package-xyz", check=False)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "step venv failed" in line and "no-such-package-xyz" in line, line  # the cause, not just "exit 1"
    assert "nbcloud logs bad8" not in line, "no pointer to a command the rollback made impossible"
    saved = Path(re.search(r"saved in (\S+\.log)", line).group(1))  # type: ignore[union-attr]
    assert saved.is_relative_to(world.home) and stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert "no-such-package-xyz" in saved.read_text() and "step venv failed" in saved.read_text()
    assert "--keep-on-failure" in line
    assert world.tagged("bad8") == [], "rolled back"


def test_keep_on_failure_leaves_the_instance_to_debug(world) -> None:
    world.names.add("bad9")
    done = world.nb("up", "bad9", "--provider", "sandbox", "--no-connect", "--keep-on-failure",
                    "--python-packages", "no-such-package-xyz", check=False)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "no-such-package-xyz" in line and "`nbcloud logs bad9 --bootstrap`" in line
    assert "`nbcloud down bad9`" in line
    assert [r.kind for r in world.tagged("bad9") if r.kind == "instance"] == ["instance"]
    assert world.status("bad9")["state"] == "running"
    logs = world.nb("logs", "bad9", "--bootstrap")
    assert "no-such-package-xyz" in logs.stdout
    world.nb("down", "bad9")
    assert [r for r in world.tagged("bad9") if r.kind != "volume" or r.state != "deleted"] == []


def test_lost_runinstances_answer_makes_one_instance(world) -> None:
    """The answer is lost (held back past the client's read timeout, then retried): the retry carries the same
    client token, so it answers with the instance the first call made."""
    from nbcloud.providers.aws.provider import AwsProvider
    from nbcloud.providers.aws.session import AwsSession
    from nbcloud.providers.base import LaunchRequest
    session = AwsSession.create(region=world.sandbox.region, endpoint_url=world.sandbox.endpoint_url,
                                access_key="testing", secret_key="testing")
    provider = AwsProvider(session, label="sandbox")
    group = world.ec2().create_security_group(GroupName="lost1", Description="test")["GroupId"]
    request = LaunchRequest(name="lost1", launch_id="feedc0ffee01", instance_type="t3.micro",
                            image_id=provider.image("ubuntu").image_id, key_name="lost1", security_group_id=group,
                            user_data=b"", disk_gb=8,
                            tags={"nbcloud:name": "lost1", "nbcloud:launch-id": "feedc0ffee01"})
    made = []
    try:
        made.append(provider.run_instance(request).instance_id)
        made.append(provider.run_instance(request).instance_id)  # what a retry after a lost answer sends
        assert made[1] == made[0]
        assert [r.resource_id for r in world.tagged("lost1") if r.kind == "instance"] == [made[0]]
    finally:
        for instance_id in set(made):
            provider.terminate(instance_id)
            provider.wait_gone(instance_id, "terminated", 120)
        provider.delete_security_group(group)
