"""Cost follow-ups on the sandbox: a stop nbcloud did not watch is billed only until the cloud's stop time, and a spot
instance accrues (and is capped) at the spot price, not on-demand's.

Prices are scaled up as in test_cost_sandbox.py (a `prices.json` in the user data directory) so the on-demand figure
accrues visibly in seconds; moto's spot price is fixed at $0.00001/h and is not scaled, which makes the spot/on-demand
difference impossible to miss.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from tests.helpers import side_by_side

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(420)]

FACTOR = 1000.0  # t3.medium: $0.0416/h → $41.6/h
MINIMUM = 20  # s billed at least per start: NBCLOUD_BILLING_MINIMUM lowers the real 60 s so the wait past it is short
MOTO_SPOT = 0.00001  # moto's DescribeSpotPriceHistory answers this for every type and zone


def _events(name: str) -> list[tuple[float, str, float | None]]:
    from nbcloud.state import open_store

    return [(at.timestamp(), state, hourly) for at, state, hourly in open_store().priced_events(name)]


def _cloud_state(world: Any, instance_id: str) -> str:
    reply = world.ec2().describe_instances(InstanceIds=[instance_id])
    return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])


def a_stop_nbcloud_did_not_see_bills_until_the_cloud_stop_time(world: Any, hourly: float) -> None:
    per_second = hourly / 3600
    up = world.up("cu-stop", "-t", "t3.medium", "--idle-stop", "off")
    first = world.status("cu-stop")
    assert first["state"] == "running" and first["hourly_usd"] == pytest.approx(hourly)
    started = _events("cu-stop")[0][0]
    time.sleep(max(0.0, started + MINIMUM + 10 - time.time()))  # past the minimum, so the stop time is what bills

    # The instance powers itself off (what the agent's idle stop or budget cap does) through the sandbox's shutdown
    # shim; nbcloud is not asked and not looking.
    t_shutdown = time.time()
    world.ssh("nb-cu-stop", "sudo shutdown -h now")  # the connection may drop under it: the cloud says what happened
    deadline = time.monotonic() + 60
    while _cloud_state(world, up["instance_id"]) not in ("stopping", "stopped"):
        assert time.monotonic() < deadline, "the shutdown shim did not stop the instance"
        time.sleep(0.5)
    t_seen = time.time()
    time.sleep(25)  # nbcloud looks only now: under the old accounting these 25 s would have been billed

    t_cost = time.time()
    report = world.nb_json("cost")
    line = {entry["name"]: entry for entry in report["lines"]}["cu-stop"]
    events = _events("cu-stop")
    runs = [at for at, state, _ in events if state == "running"]
    stops = [at for at, state, _ in events if state in ("stopping", "stopped")]
    assert runs and stops, events
    # StateTransitionReason has whole seconds: the recorded stop may be up to 1 s before the shutdown began
    assert t_shutdown - 1.5 <= stops[0] <= t_seen + 0.5, (t_shutdown, stops[0], t_seen)
    billed = max(MINIMUM, stops[0] - runs[0])
    print(f"\nunseen stop: cost ran {t_cost - t_seen:.0f} s after the stop; accrued ${line['accrued_usd']:.4f} "
          f"(until the stop ${per_second * billed:.4f}; until cost looked ${per_second * (t_cost - runs[0]):.4f})")
    assert line["accrued_usd"] == pytest.approx(per_second * billed, abs=per_second * 1.5)
    assert line["accrued_usd"] < per_second * (t_cost - runs[0] - 20), "the time after the stop was billed"
    assert line["state"] in ("stopping", "stopped")

    later = world.status("cu-stop")
    assert later["state"] == "stopped"
    assert later["accrued_usd"] == pytest.approx(line["accrued_usd"], abs=per_second * 0.5), "status and cost agree"


def spot_accrues_and_caps_at_the_spot_price(world: Any, hourly: float) -> None:
    # A cap that on-demand's price would trip at the agent's first check ((0 + 2 checks + 60 s) × $41.6/h = $0.74).
    cap = 0.5
    up = world.up("cu-spot", "--spot", "-t", "t3.medium", "--idle-stop", "off", "--max-cost", str(cap))
    view = world.status("cu-spot")
    assert view["lifecycle"] == "spot", view
    assert view["hourly_usd"] == pytest.approx(MOTO_SPOT), "status must show the price it accrues at"
    assert view["spot_hourly_usd"] == pytest.approx(MOTO_SPOT)
    assert [h for _, state, h in _events("cu-spot") if state == "running"] == [pytest.approx(MOTO_SPOT)]

    settings = json.loads(world.ssh("nb-cu-spot", "cat ~/.config/nbcloud/agent.json").stdout)
    assert settings["hourly_usd"] == pytest.approx(MOTO_SPOT) and settings["max_cost_usd"] == cap, settings

    time.sleep(12)  # several agent checks: a cap counted at on-demand would have stopped (terminated) it by now
    assert _cloud_state(world, up["instance_id"]) == "running"
    state = json.loads(world.ssh("nb-cu-spot", "cat /var/lib/nbcloud/agent-state.json").stdout)
    assert state["settings"]["hourly_usd"] == pytest.approx(MOTO_SPOT), state
    assert "cost cap" not in state["reason"], state

    final = world.status("cu-spot")
    on_demand_would_be = hourly * max(MINIMUM, final["uptime_seconds"] or 0) / 3600
    print(f"\nspot after {final['uptime_seconds']:.0f} s: accrued ${final['accrued_usd']:.6f} at ${MOTO_SPOT}/h "
          f"(on-demand ${hourly:.2f}/h would be ${on_demand_would_be:.2f}); budget left "
          f"${final['budget_remaining_usd']:.4f} of ${cap}")
    assert final["accrued_usd"] < 0.001 < on_demand_would_be
    assert final["budget_remaining_usd"] == pytest.approx(cap, abs=0.001)
    report = {entry["name"]: entry for entry in world.nb_json("cost")["lines"]}["cu-spot"]
    assert report["hourly_usd"] == pytest.approx(MOTO_SPOT) and report["accrued_usd"] < 0.001


def test_unseen_stop_and_spot_price(world: Any) -> None:
    """Both wait on the clock (past the billing minimum; several agent checks): side by side."""
    hourly = world.scale_prices(FACTOR)
    world.env["NBCLOUD_BILLING_MINIMUM"] = str(MINIMUM)
    world.env["NBCLOUD_AGENT_CHECK_PERIOD"] = "2"  # the spot cap is checked often (harmless to the other)
    side_by_side({"unseen stop": lambda: a_stop_nbcloud_did_not_see_bills_until_the_cloud_stop_time(world, hourly),
                  "spot price": lambda: spot_accrues_and_caps_at_the_spot_price(world, hourly)})
