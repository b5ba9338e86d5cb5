"""`status` rows without a network: the agent's state merged in, other machines' instances, the text rendering."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nbcloud.cli.status_text import render_status
from nbcloud.models import Instance
from nbcloud.ops.agent_state import merge_agent_state
from nbcloud.ops.lifecycle import InstanceView, _foreign_view

ROW = InstanceView(name="a", instance_id="i-a", state="running", instance_type="t3.medium", region="us-east-1",
                   provider="sandbox", host="10.0.0.2")


def test_agent_state_says_why_and_when() -> None:
    stop_at = datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC)
    state = {"idle_seconds": 40, "reason": "idle 40s of 60s (last: terminal input, 40s ago)", "busy": False,
             "stop_in_seconds": 20, "stop_at": int(stop_at.timestamp())}
    view = merge_agent_state(ROW, state)
    assert (view.idle_seconds, view.busy, view.stops_at) == (40.0, False, "2026-11-30T12:34:56+00:00")
    assert view.idle_reason == state["reason"]
    text = render_status([view])
    assert "0m40s (stop 12:34 UTC)" in text and "a: idle 40s of 60s (last: terminal input" in text
    busy = merge_agent_state(ROW, {"idle_seconds": 0, "reason": "busy: 1 kernel(s) busy", "busy": True})
    assert busy.stops_at is None and " busy " in render_status([busy])
    # an agent that could not be read in time: unknown, never an error
    assert merge_agent_state(ROW, {}).idle_reason == "agent unreachable: unknown"
    # an agent from before idle_reason (no busy, no stop_at) still fills the idle column
    old = merge_agent_state(ROW, {"idle_seconds": 5, "reason": "idle 5s of 3600s"})
    assert old.idle_seconds == 5 and old.busy is None and old.stops_at is None
    # found from outside: a stop time past any date (an idle limit of 1e40 minutes) made every `status` fail
    far = merge_agent_state(ROW, {"idle_seconds": 5, "reason": "idle 5s", "busy": False, "stop_at": 6e41})
    assert far.stops_at is None and far.idle_reason == "idle 5s" and "a: idle 5s" in render_status([far])


def test_instances_made_elsewhere_are_shown_and_priced() -> None:
    launched = datetime.now(UTC) - timedelta(hours=2)
    instance = Instance(name="b", instance_id="i-b", state="running", instance_type="t3.medium", region="us-east-1",
                        provider="aws", launched_at=launched)
    view = _foreign_view(instance)
    assert not view.managed_here and view.hourly_usd == 0.0416
    assert view.accrued_usd is not None and abs(view.accrued_usd - 2 * 0.0416) < 0.001
    text = render_status([ROW, view])
    assert "b *" in text and "made on another machine (keys not here): 1 instance(s), $0.04/h" in text


def test_a_cloud_that_cannot_be_reached_leaves_its_rows_unknown(nbcloud_home, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from nbcloud.ops import Context, status
    from nbcloud.state import Record

    monkeypatch.setenv("NBCLOUD_SANDBOX_DIR", str(tmp_path / "no-sandbox"))
    ctx = Context.create()
    ctx.store.put(Record(name="s", provider="sandbox", region="us-east-1", instance_id="i-s", state="running"))
    [row] = status(ctx)
    assert row.state == "unknown" and "sandbox is not running" in (row.idle_reason or "")
    assert ctx.store.get("s").state == "running"  # not recorded as gone: nobody knows  # type: ignore[union-attr]


def test_unreachable_agents_are_read_at_once_and_never_block_the_table(nbcloud_home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Eight running instances whose sshd accepts and never answers (a listener on loopback that says nothing):
    `status` shows each as unknown within about one read's timeout, not eight of them in turn."""
    import socket
    import time
    from dataclasses import replace

    from nbcloud.ops import Context
    from nbcloud.ops.agent_state import AGENT_STATE_TIMEOUT, with_agent_state

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    ctx = Context.create()
    ctx.paths.ssh_config.parent.mkdir(parents=True, exist_ok=True)
    names = [f"u{i}" for i in range(8)]
    ctx.paths.ssh_config.write_text("".join(
        f"Host nb-{n}\n  HostName 127.0.0.1\n  Port {port}\n  User nobody\n  BatchMode yes\n"
        f"  StrictHostKeyChecking yes\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\n" for n in names))
    views = [replace(ROW, name=n, instance_id=f"i-{n}") for n in names]
    try:
        started = time.monotonic()
        rows = with_agent_state(ctx, views)
        took = time.monotonic() - started
    finally:
        silent.close()
    assert [r.idle_reason for r in rows] == ["agent unreachable: unknown"] * len(names)
    assert took < AGENT_STATE_TIMEOUT + 2, f"{took:.1f} s: the reads waited on each other"


def test_a_reclaimed_spot_instance_is_said_so_in_the_clouds_words() -> None:
    from dataclasses import replace

    from nbcloud.ops.lifecycle import _with_end_reason
    from nbcloud.state import Record

    record = Record(name="a", provider="aws", region="us-east-1", instance_id="i-a", lifecycle="spot")
    ended = Instance(name="a", instance_id="i-a", state="terminated", instance_type="t3.medium", region="us-east-1",
                     provider="aws", lifecycle="spot", state_reason="Server.SpotInstanceTermination")

    class Cloud:  # what status asks of the provider for a gone instance: one describe by id
        def __init__(self, found: Instance | None) -> None:
            self.found, self.asked = found, []

        def describe(self, instance_id: str) -> Instance | None:
            self.asked.append(instance_id)
            return self.found

    gone = replace(ROW, state="gone", lifecycle="spot", host=None)
    cloud = Cloud(ended)
    view = _with_end_reason(cloud, record, None, gone)  # type: ignore[arg-type]
    assert cloud.asked == ["i-a"] and view.spot_reclaimed and view.state_reason == "Server.SpotInstanceTermination"
    reclaimed = "a: EC2 reclaimed the spot instance (Server.SpotInstanceTermination); `nbcloud up a`"
    assert reclaimed in render_status([view])
    # shutting down: the listed instance carries the reason, nothing more is asked
    ending = replace(ended, state="shutting-down")
    view = _with_end_reason(Cloud(None), record, ending, replace(gone, state="shutting-down"))  # type: ignore[arg-type]
    assert view.spot_reclaimed and "a: EC2 is reclaiming the spot instance" in render_status([view])
    # terminated by someone else: said so; the cloud forgot it: no guess
    user = replace(ended, state_reason="Client.UserInitiatedShutdown")
    view = _with_end_reason(Cloud(user), record, None, gone)  # type: ignore[arg-type]
    assert not view.spot_reclaimed and "ended (Client.UserInitiatedShutdown)" in render_status([view])
    view = _with_end_reason(Cloud(None), record, None, gone)  # type: ignore[arg-type]
    assert view.state_reason is None and "is gone (reclaimed or terminated)" in render_status([view])
    # a running instance: no end line, nothing asked
    on_demand = Cloud(ended)
    assert _with_end_reason(on_demand, replace(record, lifecycle="on-demand"), None, ROW) == ROW  # type: ignore[arg-type]
    assert on_demand.asked == [] and "reclaim" not in render_status([ROW])
