"""Issue 14 on the sandbox: `up` on an existing instance applies or refuses what it was given, volumes have a
lifecycle a user can see end to end, an unknown price refuses a cap, and a host-key mismatch exits 1 everywhere."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox]


def _one_line(done: Any) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_up_applies_given_options_in_place_or_refuses(world) -> None:
    first = world.up("e", "--no-durable-outputs")  # classic: durable outputs are then applied in place
    # the instance type cannot change while it runs: one line, nothing applied
    refused = world.nb("up", "e", "--provider", "sandbox", "--no-connect", "--durable-outputs", "--idle-stop", "5m",
                       "-t", "t3.large", check=False)
    assert refused.returncode == 2 and "nbcloud stop e" in _one_line(refused)
    agent = json.loads(world.ssh_out("e", "cat ~/.config/nbcloud/agent.json"))
    assert agent["idle_stop_seconds"] == 3600

    again = world.up("e", "--durable-outputs", "--idle-stop", "5m", "--max-cost", "3")
    assert again["reused"] and again["instance_id"] == first["instance_id"]
    assert sorted(again["changed"]) == ["--durable-outputs", "--idle-stop", "--max-cost"]
    agent = json.loads(world.ssh_out("e", "cat ~/.config/nbcloud/agent.json"))
    assert agent["idle_stop_seconds"] == 300 and agent["max_cost_usd"] == 3.0 and agent["hourly_usd"] > 0
    config = world.ssh_out("e", 'cat "${NBCLOUD_ROOT:-}/opt/nbcloud/etc/jupyter_server_config.py"')
    assert "server_side_execution = True" in config
    world.ssh_out("e", '"${NBCLOUD_ROOT:-}/opt/nbcloud/venv/bin/python" -c "import jupyter_server_nbmodel"')
    assert world.status("e")["budget_usd"] == 3.0
    # a cap at or below what it has already cost would stop it at the agent's next check: refused, nothing changed
    spent = world.nb("up", "e", "--provider", "sandbox", "--no-connect", "--max-cost", "0.0000001", check=False)
    assert spent.returncode == 2 and "has already cost" in _one_line(spent)
    assert json.loads(world.ssh_out("e", "cat ~/.config/nbcloud/agent.json"))["max_cost_usd"] == 3.0

    # defaults are not options: a plain `up` changes nothing and keeps what was applied
    plain = world.up("e")
    assert plain["changed"] == []
    # the bootstrap never uninstalls: durable outputs are not turned off in place (one line, exit 2)
    off = world.nb("up", "e", "--provider", "sandbox", "--no-connect", "--no-durable-outputs", check=False)
    assert off.returncode == 2 and "cannot be turned off in place" in _one_line(off)
    assert json.loads(world.ssh_out("e", "cat ~/.config/nbcloud/agent.json"))["idle_stop_seconds"] == 300

    gateway = world.up("e", "--mode", "gateway")
    assert gateway["changed"] == ["--mode"]
    assert world.ssh_out("e", "systemctl is-active nbcloud-gateway.service").strip() == "active"

    fixed = world.nb("up", "e", "--provider", "sandbox", "--no-connect", "--disk", "60", check=False)
    assert fixed.returncode == 2 and "--disk" in _one_line(fixed)

    # stopped: the type changes after a confirmation (none without a terminal: --yes)
    world.nb("stop", "e")
    unconfirmed = world.nb("up", "e", "--provider", "sandbox", "--no-connect", "-t", "t3.large", check=False)
    assert unconfirmed.returncode == 2 and "--yes" in _one_line(unconfirmed)
    retyped = world.up("e", "-t", "t3.large", "--yes")
    assert retyped["changed"] == ["--instance-type"] and retyped["instance_type"] == "t3.large"
    described = world.ec2().describe_instances(InstanceIds=[first["instance_id"]])
    assert described["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.large"
    status = world.status("e")
    assert status["instance_type"] == "t3.large" and status["state"] == "running"
    agent = json.loads(world.ssh_out("e", "cat ~/.config/nbcloud/agent.json"))
    assert agent["hourly_usd"] == status["hourly_usd"] and agent["max_cost_usd"] == 3.0


def test_volume_lifecycle_end_to_end(world) -> None:
    world.up("d1", "--data-volume", "v9:2", "--idle-stop", "off")
    world.nb("down", "d1")
    doctor = world.nb_json("doctor", "--orphans", "--provider", "sandbox")
    billing = [i for i in doctor["still_billing"] if i["name"] == "v9"]
    assert len(billing) == 1 and billing[0]["kind"] == "volume" and billing[0]["monthly_usd"] > 0
    assert doctor["still_billing_monthly_usd"] >= billing[0]["monthly_usd"]
    plain = world.nb_json("doctor", "--provider", "sandbox")
    assert [i["monthly_usd"] for i in plain["still_billing"] if i["name"] == "v9"] == [billing[0]["monthly_usd"]]

    world.up("d2", "--data-volume", "v9", "--idle-stop", "off")
    attached = world.nb("volumes", "delete", "v9", "--yes", "--provider", "sandbox", check=False)
    assert attached.returncode == 2 and "attached to d2" in _one_line(attached)
    down = world.nb_json("down", "d2", "--delete-data", "--yes")
    assert any(line.startswith("v9 ") for line in down["deleted_data_volumes"]), down
    assert not [v for v in world.nb_json("volumes", "--provider", "sandbox") if v["name"] == "v9"]

    world.up("d3", "--data-volume", "w1:1", "--idle-stop", "off")
    world.nb("down", "d3")
    unconfirmed = world.nb("volumes", "delete", "w1", "--provider", "sandbox", check=False)
    assert unconfirmed.returncode == 2 and "--yes" in _one_line(unconfirmed)
    deleted = world.nb_json("volumes", "delete", "w1", "--yes", "--provider", "sandbox")
    assert deleted["name"] == "w1" and deleted["monthly_usd_saved"] > 0
    assert not [i for i in world.nb_json("doctor", "--orphans", "--provider", "sandbox")["still_billing"]
                if i["name"] in {"v9", "w1"}]


def test_cap_with_unknown_price_is_refused_before_anything_exists(world) -> None:
    # t2.micro is a real type the shipped price table lacks; the sandbox serves no Price List API
    world.names.add("p")  # torn down should it be made after all
    done = world.nb("up", "p", "--provider", "sandbox", "--no-connect", "-t", "t2.micro", "--max-cost", "5",
                    check=False)
    assert done.returncode == 2 and "--max-cost needs the price of t2.micro" in _one_line(done)
    assert world.tagged("p") == []


@pytest.mark.parametrize(("code", "needle"), [("InsufficientInstanceCapacity", "(InsufficientInstanceCapacity)"),
                                               ("VcpuLimitExceeded", "quota")])
def test_capacity_and_quota_exit_1(world, code: str, needle: str) -> None:
    from nbcloud.sandbox import client as sandbox

    world.names.add("cap")
    sandbox.fault_api("RunInstances", code, count=10, sandbox_dir=world.sandbox.sandbox_dir)
    try:
        done = world.nb("up", "cap", "--provider", "sandbox", "--no-connect", check=False)
    finally:
        sandbox.fault_api("RunInstances", code, count=0, sandbox_dir=world.sandbox.sandbox_dir)
    assert done.returncode == 1 and needle in _one_line(done)
    assert world.tagged("cap") == []


def test_host_key_mismatch_exits_1_from_every_command(world) -> None:
    world.up("hk", "--idle-stop", "off")
    from nbcloud.config import paths
    from nbcloud.ssh import config as ssh_config
    from nbcloud.ssh.keys import generate_ed25519

    ssh_config.pin_host_key(paths(), "nb-hk", generate_ed25519("impostor").public_blob)
    for argv in (["up", "hk", "--provider", "sandbox", "--no-connect"], ["start", "hk"],
                 ["connect", "hk", "--no-browser"]):
        done = world.nb(*argv, check=False, timeout=120)
        assert done.returncode == 1, (argv, done.stderr)
        assert "host key" in _one_line(done), argv
