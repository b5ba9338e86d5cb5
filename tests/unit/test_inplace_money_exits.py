"""Issue 14 without a cloud: the in-place plan of `up` on an existing instance, money inputs, JSON without NaN, and one
exit-code rule checked over many command lines (one line on stderr, never a traceback)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbcloud.errors import CapacityError, ConflictError, HostKeyError, QuotaError, RemoteError, TunnelError, UsageError
from nbcloud.models import InstanceSpec, parse_usd
from nbcloud.ops.inplace import plan_in_place

STORED = InstanceSpec(name="e", instance_type="t3.medium", idle_stop_seconds=3600)


def test_only_given_options_count() -> None:
    # defaults that differ from the stored spec (idle 60m vs a changed 5m) are not "asked for"
    wanted = InstanceSpec(name="e", instance_type="t3.medium", idle_stop_seconds=3600, durable_outputs=True)
    plan = plan_in_place(STORED, wanted, frozenset({"durable_outputs"}), state="running")
    assert plan.changed == ("durable_outputs",) and plan.bootstrap and not plan.agent
    assert plan.spec.durable_outputs and plan.spec.idle_stop_seconds == 3600
    same = plan_in_place(STORED, STORED, frozenset({"idle_stop_seconds", "instance_type"}), state="running")
    assert same.changed == () and same.flags() == []


def test_agent_and_bootstrap_changes_in_place() -> None:
    wanted = InstanceSpec(name="e", idle_stop_seconds=300, max_cost_usd=5.0, gateway=True,
                          python_packages=("polars",))
    stored = InstanceSpec(name="e", python_packages=("numpy",))
    plan = plan_in_place(stored, wanted, frozenset({"idle_stop_seconds", "max_cost_usd", "gateway",
                                                    "python_packages"}), state="running")
    assert set(plan.flags()) == {"--idle-stop", "--max-cost", "--mode", "--python-packages"}
    assert plan.agent and plan.bootstrap
    assert plan.spec.python_packages == ("numpy", "polars")  # added to, never replaced (no uninstall)


def test_instance_type_only_while_stopped() -> None:
    wanted = InstanceSpec(name="e", instance_type="t3.large")
    with pytest.raises(ConflictError) as running:
        plan_in_place(STORED, wanted, frozenset({"instance_type"}), state="running")
    assert "nbcloud stop e" in running.value.one_line() and "up e -t t3.large" in running.value.one_line()
    plan = plan_in_place(STORED, wanted, frozenset({"instance_type"}), state="stopped")
    assert plan.new_type == "t3.large" and plan.flags() == ["--instance-type"]
    capped = plan_in_place(InstanceSpec(name="e", max_cost_usd=5.0), wanted, frozenset({"instance_type"}),
                           state="stopped")
    assert capped.agent  # the cap must count at the new type's price


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("image", "dlami", "--image"), ("disk_gb", 100, "--disk"), ("spot", True, "--spot"),
    ("data_volume", "v9", "--data-volume"), ("public", True, "--public"), ("zone", "us-east-1b", "--zone"),
])
def test_fixed_at_launch_is_refused(field: str, value: object, flag: str) -> None:
    wanted = InstanceSpec(name="e", **{field: value})  # type: ignore[arg-type]
    with pytest.raises(UsageError) as refused:
        plan_in_place(STORED, wanted, frozenset({field}), state="running")
    assert flag in refused.value.message and "nbcloud down e" in refused.value.hint


def test_gateway_off_and_power_on_a_machine_you_had_are_refused() -> None:
    with pytest.raises(UsageError, match="gateway mode"):
        plan_in_place(InstanceSpec(name="e", gateway=True), InstanceSpec(name="e"), frozenset({"gateway"}),
                      state="running")
    with pytest.raises(UsageError, match="--idle-stop"):
        plan_in_place(STORED, InstanceSpec(name="e", idle_stop_seconds=300), frozenset({"idle_stop_seconds"}),
                      state="running", powerable=False)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "0.0", "abc", "", "2e6"])
def test_money_refused(text: str) -> None:
    with pytest.raises(UsageError) as refused:
        parse_usd(text, "--max-cost")
    assert "--max-cost" in refused.value.one_line()


@pytest.mark.parametrize(("text", "value"), [("25", 25.0), ("0.5", 0.5), (" 1e3 ", 1000.0)])
def test_money_accepted(text: str, value: float) -> None:
    assert parse_usd(text, "--max-cost") == value


def test_json_never_carries_nan() -> None:
    from nbcloud.cli.output import to_jsonable

    data = to_jsonable({"budget_usd": math.nan, "x": [math.inf, 1.5], "nested": {"y": -math.inf}})
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == {"budget_usd": None, "x": [None, 1.5], "nested": {"y": None}}


def test_one_exit_code_rule() -> None:
    for error in (CapacityError("x"), QuotaError("x"), HostKeyError("x"), TunnelError("x"), RemoteError("x")):
        assert error.exit_code == 1, type(error).__name__
    assert isinstance(HostKeyError("x"), RemoteError)
    assert UsageError("x").exit_code == 2 and ConflictError("x").exit_code == 2


CASES = [
    (["up", "x", "--max-cost", "nan"], 2, "--max-cost"),
    (["up", "x", "--max-cost", "inf"], 2, "--max-cost"),
    (["up", "x", "--max-cost", "1e400"], 2, "--max-cost"),
    (["up", "x", "--max-cost", "-1"], 2, "--max-cost"),
    (["up", "x", "--max-cost", "0"], 2, "--max-cost"),
    (["up", "x", "--max-cost", "nan", "--dry-run"], 2, "--max-cost"),
    (["up", "x", "--spot", "--max-price", "nan"], 2, "--max-price"),
    (["up", "x", "--provider", "ssh", "--spot", "--dry-run"], 2, "needs its address"),
    (["up", "x", "--provider", "ssh", "--spot"], 2, "needs its address"),
    (["up", "x", "--host", "me@example.invalid", "--spot"], 2, "--spot"),
    (["up", "x", "--host", "me@example.invalid", "--dry-run"], 2, "--dry-run"),
    (["up", "x", "--max-price", "1"], 2, "spot"),
    (["up", "Bad_Name"], 2, "invalid instance name"),
    (["up", "x", "--idle-stop", "5x"], 2, "duration"),
    (["up"], 2, "NAME"),
    (["status", "nosuch"], 2, "nosuch"),
    (["start", "nosuch"], 2, "nosuch"),
    (["down", "nosuch", "--yes"], 2, "nosuch"),
    (["autostop", "nosuch", "5m"], 2, "nosuch"),
    (["volumes", "delete", "v9"], 2, "--yes"),
    (["cost", "--since", "yesterday"], 2, "duration"),
    (["no-such-command"], 2, "no-such-command"),
    (["up", "x", "--public", "--dry-run"], 2, "--password-file"),
    (["up", "x", "--password-file", "/etc/hostname", "--dry-run"], 2, "--public"),
    (["up", "x", "--dry-run", "--max-cost", "25"], 0, None),
]


@pytest.mark.parametrize(("argv", "code", "needle"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_exit_codes_and_one_line(tmp_path: Path, argv: list[str], code: int, needle: str | None) -> None:
    env = dict(os.environ, NBCLOUD_HOME=str(tmp_path / "home"), NBCLOUD_QUIET="1",
               NBCLOUD_SANDBOX_DIR=str(tmp_path / "no-sandbox"), NBCLOUD_USER_SSH_CONFIG=str(tmp_path / "ssh"))
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *argv], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    if code:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert needle in lines[0], lines[0]


def _provider_with_pricing(region: str, responses: list[dict[str, object] | str]) -> object:
    """The real AwsProvider whose boto session hands out a pricing client stubbed with ``responses`` (the Price List
    API cannot be reached here; a string is an error code)."""
    from types import SimpleNamespace

    import boto3
    from botocore.stub import Stubber

    from nbcloud.providers.aws.provider import AwsProvider

    client = boto3.client("pricing", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    stub = Stubber(client)
    for response in responses:
        if isinstance(response, str):
            stub.add_client_error("get_products", service_error_code=response)
        else:
            stub.add_response("get_products", response)
    stub.activate()
    session = SimpleNamespace(boto=SimpleNamespace(client=lambda *_a, **_k: client), endpoint_url=None, region=region)
    return AwsProvider(session, label="aws")  # type: ignore[arg-type]


def test_unknown_price_fetched_live_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_pricing import _ec2_entry

    from nbcloud.money.pricing import load_prices
    from nbcloud.money.quotes import require_price_for_cap

    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))
    assert load_prices().hourly("g5.xlarge", "ap-northeast-1") is None  # the snapshot lacks the region
    provider = _provider_with_pricing("ap-northeast-1", [{"PriceList": [_ec2_entry(regionCode="ap-northeast-1")]}])
    assert require_price_for_cap(provider, "g5.xlarge", 25.0) == 1.006  # type: ignore[arg-type]
    # kept in the user's table: status, cost and the agent's cap count with it from now on
    assert load_prices().hourly("g5.xlarge", "ap-northeast-1") == 1.006


def test_unknown_price_refuses_a_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbcloud.money.quotes import require_price_for_cap

    monkeypatch.setenv("NBCLOUD_HOME", str(tmp_path / "home"))
    provider = _provider_with_pricing("eu-west-1", ["AccessDeniedException"])
    with pytest.raises(UsageError) as refused:
        require_price_for_cap(provider, "p4d.24xlarge", 25.0)  # type: ignore[arg-type]
    assert "--max-cost" in refused.value.one_line() and "p4d.24xlarge in eu-west-1" in refused.value.message
    assert require_price_for_cap(provider, "p4d.24xlarge", None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("provider", "region", "flag"), [
    (None, "us-west-2", "--region us-west-2"), ("aws", None, "--provider aws"),
    ("aws", "eu-west-1", "--provider aws --region eu-west-1"),
])
def test_existing_instance_elsewhere_is_refused_not_reused(provider: str | None, region: str | None,
                                                           flag: str) -> None:
    """`up e --region us-west-2` on an `e` in us-east-1 answered "reused" and dropped the region."""
    from nbcloud.ops.inplace import refuse_elsewhere
    from nbcloud.state import Record

    record = Record(name="e", provider="sandbox", region="us-east-1", instance_id="i-e", state="running")
    with pytest.raises(UsageError) as refused:
        refuse_elsewhere(record, provider, region)
    assert flag in refused.value.message and "sandbox/us-east-1" in refused.value.message
    refuse_elsewhere(record, "sandbox", "us-east-1")  # where it is: reused
    refuse_elsewhere(record, None, None)


def test_password_file_on_an_existing_instance_is_refused(nbcloud_home: Path, tmp_path: Path) -> None:
    """A new --password-file for an instance that exists was dropped ("reusing: it already has its password");
    refused before any cloud call."""
    from nbcloud.ops import Context
    from nbcloud.state import Record

    Context.create().store.put(Record(name="e", provider="sandbox", region="us-east-1", instance_id="i-e",
                                      state="running"))
    secret = tmp_path / "pw"
    secret.write_text("a-long-password\n")
    env = dict(os.environ, NBCLOUD_SANDBOX_DIR=str(tmp_path / "no-sandbox"))
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "up", "e", "--provider", "sandbox", "--public",
                           "--password-file", str(secret)], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert line.startswith("error: ") and "--password-file" in line and "\n" not in line, line
