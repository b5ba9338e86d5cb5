"""`nbcloud ssh` and `nbcloud logs` on a stopped instance: one line saying so and how to start it, exit 2.

Found by trying the CLI from outside: after `nbcloud stop` (or the agent's idle stop or cost cap) `nbcloud logs NAME`
exited 255 with ssh's own "connect to host 10.x port 22: Invalid argument", which does not say the machine is off.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.sandbox]


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_ssh_and_logs_on_a_stopped_instance_say_so(world) -> None:
    result = world.up("off", "--idle-stop", "off")

    world.nb("stop", "off")  # the local record knows: refused before any ssh
    for argv in (["logs", "off"], ["logs", "off", "--agent"], ["ssh", "off", "--", "true"]):
        done = world.nb(*argv, check=False)
        assert done.returncode == 2, (argv, done.returncode, done.stderr)
        assert _error_lines(done.stderr) == [
            "error: instance 'off' is stopped — start it with `nbcloud start off`"], (argv, done.stderr)
        assert "ssh:" not in done.stderr, done.stderr
    done = world.nb("ssh", "--json", "off", "--", "true", check=False)
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["message"] == "instance 'off' is stopped"

    # Stopped behind nbcloud's back (the console, the agent): the record still says running; ssh's failure is
    # explained from the cloud's answer.
    world.nb("start", "off")
    ec2 = world.ec2()
    ec2.stop_instances(InstanceIds=[result["instance_id"]])
    ec2.get_waiter("instance_stopped").wait(InstanceIds=[result["instance_id"]],
                                            WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    done = world.nb("logs", "off", "--json", check=False)
    assert done.returncode == 2 and json.loads(done.stdout)["error"]["message"] == "instance 'off' is stopped"
    done = world.nb("logs", "off", check=False)
    assert done.returncode == 2, done.stderr
    assert _error_lines(done.stderr) == ["error: instance 'off' is stopped — start it with `nbcloud start off`"]
    assert "Traceback" not in done.stderr
