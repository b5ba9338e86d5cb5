"""Issue 18 on the sandbox: the host key in user-data is only a bootstrap credential (the instance makes a new one,
pinned over the first session), and only root on the instance reaches the metadata service (user-data)."""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
from typing import Any

import pytest
from tests.helpers import wait_until

pytestmark = [pytest.mark.sandbox]

TOKEN = ("curl -sf -m 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "
         "http://169.254.169.254/latest/api/token")
USER_DATA = f't=$({TOKEN}) && curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" http://169.254.169.254/latest/user-data'


def test_host_key_is_rotated_and_imds_is_root_only(world: Any) -> None:
    from nbcloud.config import paths
    from nbcloud.sandbox.userdata import parse_user_data

    result = world.up("hk", "--idle-stop", "off")
    raw = world.ec2().describe_instance_attribute(InstanceId=result["instance_id"], Attribute="userData")
    launch_key = parse_user_data(base64.b64decode(raw["UserData"]["Value"])).host_keys["ed25519"][1]
    launch_blob = " ".join(launch_key.split()[:2])

    pinned = [line.split(" ", 1)[1] for line in paths().known_hosts.read_text().splitlines()
              if line.startswith("nb-hk ")]
    assert len(pinned) == 1 and pinned[0].startswith("ssh-ed25519 ") and pinned[0] != launch_blob
    assert world.ssh("nb-hk").returncode == 0, "plain ssh works with the new pinned key"
    scanned = subprocess.run(["ssh-keyscan", "-T", "5", "-t", "ed25519", result["host"]], capture_output=True,
                             text=True, timeout=30).stdout
    presented = [" ".join(line.split()[1:3]) for line in scanned.splitlines() if not line.startswith("#")]
    assert presented == [pinned[0]], (presented, pinned)
    assert launch_blob not in presented

    as_user = world.ssh("nb-hk", TOKEN)
    assert as_user.returncode != 0 and not as_user.stdout.strip(), "the login user cannot get an IMDS token"
    as_root = world.ssh("nb-hk", f"sudo sh -c {shlex.quote(USER_DATA)} | wc -c")
    assert as_root.returncode == 0 and int(as_root.stdout.strip()) > 100, as_root
    assert "imds guard: only root" in world.ssh_out("hk", "cat /var/log/nbcloud/bootstrap.log")

    # the agent (root) still reads IMDS for spot notices
    def agent_polled() -> dict[str, Any] | None:
        state = json.loads(world.ssh_out("hk", "sudo cat /var/lib/nbcloud/agent-state.json 2>/dev/null || echo {}"))
        return state if state else None

    assert "imds_error" not in wait_until(agent_polled, 60, 1.0, "agent state written")

    # after a reboot the rule is back (the unit runs at every boot) and the rotated key still answers
    guard_lines = "grep -c 'imds guard: only root' /var/log/nbcloud/bootstrap.log"
    assert world.ssh_out("hk", guard_lines).strip() == "1", "one line per run of the guard"
    world.nb("sandbox", "fault", result["instance_id"], "reboot")
    wait_until(lambda: world.ssh("nb-hk", guard_lines).stdout.strip() == "2", 120, 1.0,
               "the guard installed again at boot")
    assert world.ssh("nb-hk", TOKEN).returncode != 0
    assert world.ssh_out("hk", f"sudo sh -c {shlex.quote(USER_DATA)} | wc -c").strip() != "0"
