"""The AWS CLI against the sandbox: `sandbox start`/`status` print the command line that works, as printed.

Found trying the sandbox from outside: the endpoint was shown, but not that the CLI needs credentials (any will do;
without them it stops at "Unable to locate credentials") nor the region, and the README said neither.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.sandbox]


def test_printed_aws_cli_command_lists_the_instances(world) -> None:
    made = world.up("cli", "--idle-stop", "off")
    status = world.nb_json("sandbox", "status")
    line = status["aws_cli"]
    assert line in world.nb("sandbox", "status").stdout and line in world.nb("sandbox", "start").stdout

    words = shlex.split(line)
    assignments = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    argv = [w for w in words if w not in {f"{k}={v}" for k, v in assignments.items()}]
    assert argv[0] == "aws"
    env = {k: v for k, v in world.env.items() if not k.startswith("AWS_")} | assignments
    done = subprocess.run([sys.executable, "-m", "awscli", *argv[1:], "--output", "json"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ids = [i["InstanceId"] for r in json.loads(done.stdout)["Reservations"] for i in r["Instances"]]
    assert made["instance_id"] in ids
