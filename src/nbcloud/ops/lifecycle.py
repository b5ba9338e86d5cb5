"""status, start, stop, down, list and the orphan scan: tags in the cloud are the truth, the store a cache."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ..errors import ConflictError, NbcloudError, NotFoundError, UsageError
from ..models import VOLUME_NAME_TAG, Instance, Volume
from ..money.quotes import launch_price
from ..providers.base import Provider, TaggedResource, manages_machines
from ..ssh import config as ssh_config
from ..ssh import session
from ..state import Record
from .agent_state import AgentReads
from .context import Context, Progress, no_progress
from .costs import cost_fields
from .instances import (
    forget_locally,
    parse_data_volume,
    refresh,
    repin_ingress,
    stop_tunnel,
    stored_spec,
    sync_record,
    wait_ready,
)
from .launches import interrupted_launches, recover_name
from .public import reissue_tls_if_moved
from .storage import remove_billing, snapshot_volume, still_billing
from .tunnels import tunnel_fields

__all__ = ["DownResult", "InstanceView", "down", "down_unlocked", "forget_gone", "orphans", "refresh", "start_instance",
           "status", "stop_instance", "stored_spec"]


@dataclass(frozen=True)
class InstanceView:
    """One row of `status`: the cloud's view, the tunnel, and what it costs."""

    name: str
    instance_id: str | None
    state: str
    instance_type: str | None
    region: str
    provider: str
    host: str | None
    user: str = "ubuntu"
    lifecycle: str = "on-demand"
    zone: str | None = None
    gpus: int | None = None
    uptime_seconds: float | None = None
    tunnel: str = "down"
    tunnel_since: str | None = None
    local_port: int | None = None
    held_connections: int = 0  # connections the resumable tunnel carries (held through an outage)
    forwards: list[dict[str, int]] = field(default_factory=list)  # --forward ports {remote_port, local_port}
    last_outage: dict[str, Any] | None = None
    tunnel_mode: str | None = None  # resumable | plain, while a tunnel runs
    tunnel_fallback: str | None = None  # why it runs plain although resumable was asked for
    hourly_usd: float | None = None
    accrued_usd: float | None = None
    budget_usd: float | None = None
    budget_remaining_usd: float | None = None
    volumes_monthly_usd: float | None = None
    idle_seconds: float | None = None
    idle_stop_seconds: int | None = None
    spot_notice: str | None = None
    spot_hourly_usd: float | None = None
    #: why the instance is ending or ended, the cloud's code (EC2's StateReason), while shutting down or gone
    state_reason: str | None = None
    #: the cloud says so: EC2 reclaimed the spot instance (StateReason Server.SpotInstanceTermination)
    spot_reclaimed: bool = False
    #: False: made from another machine (found by its tags); its keys are not here, so no tunnel, agent or ssh
    managed_here: bool = True
    vscode: str | None = None  # `code --remote ssh-remote+nb-NAME /home/USER`
    #: the agent's word: why it counts the instance busy or idle, and when it stops if nothing happens
    idle_reason: str | None = None
    busy: bool | None = None
    stops_at: str | None = None
    cluster: dict[str, Any] | None = None  # its Dask workers, their state and price, the whole cluster's $/h


@dataclass(frozen=True)
class StopResult:
    name: str
    instance_id: str
    state: str
    still_billing: list[str] = field(default_factory=list)
    monthly_usd: float | None = None


@dataclass(frozen=True)
class DownResult:
    name: str
    deleted: list[str]
    kept: list[str]
    still_billing: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)
    deleted_data_volumes: list[str] = field(default_factory=list)


def _check_powerable(provider: Provider, name: str) -> None:
    """A machine nbcloud did not make (the ssh provider) is the user's to power: refuse before touching it."""
    if not manages_machines(provider):
        raise UsageError(f"{name} is a machine you already had ({provider.name} provider): nbcloud cannot stop or "
                         "start it", f"power it yourself; `nbcloud down {name}` removes nbcloud's Jupyter from it")


def start_instance(ctx: Context, name: str, progress: Progress = no_progress, wait_jupyter: bool = True) -> Instance:
    record = ctx.record(name)
    ctx.key_path(name)
    provider = ctx.provider_for(record)
    _check_powerable(provider, name)
    instance = provider.find(name)
    if instance is None:
        raise NotFoundError(f"instance {name!r} no longer exists in {record.region}",
                            f"`nbcloud down {name}` cleans up; `nbcloud up {name}` makes a new one")
    sync_record(ctx, record, instance)  # a stop this machine has not seen yet (the agent's) ends a billed period
    if instance.state == "stopping":
        progress("waiting for the previous stop to finish")
        provider.wait_gone(instance.instance_id, "stopped", 600)
    if instance.state != "running":
        progress(f"starting {instance.instance_id}")
        provider.start(instance.instance_id)
    instance = provider.wait_running(instance.instance_id, timeout=600)
    sync_record(ctx, record, instance)
    repin_ingress(ctx, provider, record, instance)
    progress(f"waiting for ssh nb-{name} ({instance.host})")
    session.wait_ssh(ctx.paths.ssh_config, f"nb-{name}", timeout=300)
    reissue_tls_if_moved(ctx, name, instance.host, progress=progress)  # public mode: the cert named the old address
    if wait_jupyter:
        wait_ready(ctx, name, 600, progress)
    return instance


def _volumes_of(provider: Provider, name: str) -> list[Any]:
    return [v for v in provider.list_volumes() if v.tags.get("nbcloud:name") == name]


def _volume_bill(provider: Provider, volumes: list[Any]) -> tuple[list[str], float | None]:
    try:
        from ..money.cost import format_usd, idle_volume_monthly
        from ..money.pricing import load_prices

        table = load_prices()
        lines = [f"{v.volume_id} ({v.size_gb} GB, {format_usd(table.ebs_monthly(v.size_gb, provider.region))}/month)"
                 for v in volumes]
        return lines, idle_volume_monthly(volumes, table, provider.region)
    except ImportError:
        return [f"{v.volume_id} ({v.size_gb} GB)" for v in volumes], None


def stop_instance(ctx: Context, name: str, progress: Progress = no_progress, wait: bool = True) -> StopResult:
    record = ctx.record(name)
    provider = ctx.provider_for(record)
    _check_powerable(provider, name)
    instance = provider.find(name)
    if instance is None:
        raise NotFoundError(f"instance {name!r} no longer exists", f"`nbcloud down {name}` cleans up")
    if instance.lifecycle == "spot":
        raise ConflictError(f"{name} is a spot instance, which cannot be stopped and started",
                            f"`nbcloud down {name}` (your data volume is kept) and `nbcloud up {name}` later")
    if instance.state not in {"stopped", "stopping"}:
        progress(f"stopping {instance.instance_id}")
        provider.stop(instance.instance_id)
    stop_tunnel(ctx, name)
    if wait:
        provider.wait_gone(instance.instance_id, "stopped", 600)
    ctx.store.record_state(name, instance.instance_id, "stopped")
    ctx.store.update(name, state="stopped")
    # Root disk plus data volumes keep billing while stopped: say so.
    root = [v for v in instance.volume_ids]
    volumes = [v for v in _volumes_of(provider, name) if v.volume_id in root or v.tags.get(VOLUME_NAME_TAG)]
    # A root volume the tag scan does not list (moto leaves it untagged) is still the instance's disk.
    listed = {v.volume_id for v in volumes}
    disk_gb = stored_spec(record).disk_gb
    volumes += [Volume(volume_id=v, name=None, size_gb=disk_gb, zone=instance.zone or "", state="in-use")
                for v in root if v not in listed]
    billing, monthly = _volume_bill(provider, volumes)
    return StopResult(name, instance.instance_id, "stopped", billing, monthly)


def down(ctx: Context, name: str, *, delete_data: bool = False, snapshot: bool = False,
         progress: Progress = no_progress) -> DownResult:
    """Terminate and delete everything tagged for ``name`` (its data volumes only with ``delete_data``).

    ``snapshot``: once the instance is gone (the disk is quiet), snapshot each data volume and wait until the
    snapshot is complete, before anything is deleted.
    """
    with ctx.name_lock(name):
        # an `up NAME` that was killed: what its launch made goes first, found by its launch id
        recovered = recover_name(ctx, name, progress)
        if recovered and ctx.store.get(name) is None:
            return DownResult(name, [r for rec in recovered for r in rec.removed],
                              [f"{r} (could not delete)" for rec in recovered for r in rec.failed])
        return down_unlocked(ctx, name, delete_data=delete_data, snapshot=snapshot, progress=progress)


def down_unlocked(ctx: Context, name: str, *, delete_data: bool = False, snapshot: bool = False,
                  progress: Progress = no_progress) -> DownResult:
    """:func:`down` for a caller that already holds the name lock (`up` relaunching a reclaimed spot instance)."""
    record = ctx.record(name)
    stop_tunnel(ctx, name)  # first: the local processes stop even when the cloud cannot be reached
    provider = ctx.provider_for(record)
    if manages_machines(provider):  # its cluster's workers and group first: the group names the instance's
        from .cluster import teardown

        teardown(ctx, provider, name, record, progress)
    resources = provider.tagged_resources(name)
    deleted, kept = [], []
    instances = [r for r in resources if r.kind == "instance"]
    # a named volume made by another instance and reused here carries that instance's name tag: found by what
    # this instance had attached (looked at before terminating detaches it) and by the name in its spec
    reused = _reused_volumes(provider, record, {r.resource_id for r in instances})
    for resource in instances:
        progress(f"terminating {resource.resource_id}")
        provider.terminate(resource.resource_id)
    for resource in instances:
        provider.wait_gone(resource.resource_id, "terminated", 600)
        deleted.append(f"instance {resource.resource_id}")
    if record.instance_id:
        ctx.store.record_state(name, record.instance_id, "terminated")
    data_volumes = {v.volume_id: v for v in provider.list_volumes()
                    if v.tags.get("nbcloud:name") == name or v.volume_id in reused}
    snapshots = _snapshot_volumes(provider, list(data_volumes.values()), progress) if snapshot else []
    tagged_ids = {r.resource_id for r in resources}
    resources = resources + [TaggedResource("volume", vid, name, None) for vid in data_volumes
                             if vid not in tagged_ids]
    deleted_data: list[str] = []
    kept_data: list[Volume] = []  # the kept data volumes themselves, for their bill (``kept`` is for display)
    for resource in (r for r in resources if r.kind != "instance"):
        if resource.kind == "volume" and resource.resource_id in data_volumes and not delete_data:
            kept.append(f"data volume {resource.resource_id}")
            kept_data.append(data_volumes[resource.resource_id])
            continue
        progress(f"deleting {resource.kind} {resource.resource_id}")
        try:
            provider.delete_resource(resource)
            deleted.append(f"{resource.kind} {resource.resource_id}")
            if resource.resource_id in data_volumes:
                volume = data_volumes[resource.resource_id]
                deleted_data.append(f"{volume.name or volume.volume_id} ({volume.volume_id}, {volume.size_gb} GB)")
        except NbcloudError as exc:
            kept.append(f"{resource.kind} {resource.resource_id} (could not delete: {exc.message})")
    forget_locally(ctx, name)
    billing, _ = _volume_bill(provider, kept_data)
    return DownResult(name, deleted, kept, billing, snapshots, deleted_data)


def _reused_volumes(provider: Provider, record: Record, instance_ids: set[str]) -> set[str]:
    """Data volumes the instance had attached, or named in its spec and attached to nothing else."""
    found = {v.volume_id for v in provider.list_volumes() if v.attached_to and v.attached_to in instance_ids}
    wanted = parse_data_volume((record.spec or {}).get("data_volume"), record.name)
    if wanted is not None:
        volume = provider.find_volume(wanted[0])
        if volume is not None and (volume.attached_to is None or volume.attached_to in instance_ids):
            found.add(volume.volume_id)
    return found


def forget_gone(ctx: Context, name: str) -> None:
    """``name`` is gone with its cloud (a sandbox reset): stop its local processes, close its billed period and
    forget it here. Nothing in any cloud is touched."""
    record = ctx.record(name)
    stop_tunnel(ctx, name)
    if record.instance_id and record.state != "gone":
        ctx.store.record_state(name, record.instance_id, "terminated")
    forget_locally(ctx, name)


def _snapshot_volumes(provider: Provider, volumes: list[Any], progress: Progress) -> list[str]:
    made = []
    for volume in volumes:
        progress(f"snapshotting data volume {volume.name or volume.volume_id} ({volume.volume_id})")
        made.append(snapshot_volume(provider, volume, "down"))
    return made


def status(ctx: Context, name: str | None = None, with_agent: bool = True) -> list[InstanceView]:
    """One paginated DescribeInstances per (provider, region) the store knows; tunnels and cost merged in.

    Tags are the truth, the store a cache: without ``name``, the instances tagged for nbcloud in those regions that
    this machine did not make are listed too (``managed_here`` False), priced from the table.
    """
    records = [ctx.record(name)] if name else ctx.store.all()
    reads = AgentReads(ctx) if with_agent else None
    if reads is not None:  # what the store last saw running is read while the cloud is asked (see agent_state.py)
        reads.start((r.name, r.host) for r in records if r.state == "running")
    try:
        views = _cloud_views(ctx, records, name)
    except BaseException:
        if reads is not None:
            reads.cancel()
        raise
    if reads is not None:
        views = reads.merge(views)
    return sorted(views, key=lambda v: (not v.managed_here, v.name))


def _cloud_views(ctx: Context, records: list[Record], name: str | None) -> list[InstanceView]:
    groups: dict[tuple[str, str, str | None], list[Record]] = defaultdict(list)
    for record in records:
        groups[(record.provider, record.region, record.profile)].append(record)
    views: list[InstanceView] = []
    for (provider_name, region, profile), members in groups.items():
        try:
            provider = ctx.provider(provider_name, region, profile)
            listed = provider.list_instances()
        except NbcloudError as exc:  # one cloud unreachable (or a sandbox not running) must not hide the others
            views += [replace(_view(ctx, record, None), state="unknown", instance_id=record.instance_id,
                              idle_reason=f"{provider_name}/{region} unreachable: {exc.message}") for record in members]
            continue
        live = {i.name: i for i in listed}
        for record in members:
            instance = live.get(record.name)
            sync_record(ctx, record, instance, provider)
            spot_now = _spot_price_now(ctx, provider, record, instance)
            view = _view(ctx, ctx.store.get(record.name) or record, instance)
            if spot_now is not None:
                view = replace(view, spot_hourly_usd=spot_now)
            view = _with_end_reason(provider, record, instance, view)
            views.append(_with_cluster(ctx, provider, view))
        if name is None and manages_machines(provider):
            from ..models import CLUSTER_TAG

            known = {r.name for r in records}
            # a known instance's cluster workers are shown on its own cluster line, not as another machine's
            views += [_foreign_view(i) for i in listed if i.name not in known and i.state not in _ENDED
                      and i.tags.get(CLUSTER_TAG) not in known]
    return views


_ENDED = {"terminated", "shutting-down"}
SPOT_RECLAIM = "Server.SpotInstanceTermination"


def _with_end_reason(provider: Provider, record: Record, instance: Instance | None,
                     view: InstanceView) -> InstanceView:
    """Why a spot instance is shutting down or gone, in the cloud's words (its StateReason), not guessed.

    A gone one is not in the listing (terminated ones are left out): it is asked for by id, one call, only for
    spot records (EC2 still describes a terminated instance for about an hour; after that the reason is unknown).
    """
    if record.lifecycle != "spot" and (instance is None or instance.lifecycle != "spot"):
        return view
    ended = instance
    if instance is None and record.instance_id:
        try:
            ended = provider.describe(record.instance_id)
        except NbcloudError:
            ended = None  # the reason is information here: `status` must not fail over it
    if ended is None or ended.state not in _ENDED or not ended.state_reason:
        return view
    return replace(view, state_reason=ended.state_reason, spot_reclaimed=ended.state_reason == SPOT_RECLAIM)


def _foreign_view(instance: Instance) -> InstanceView:
    """An instance made from another machine: the cloud's view, priced from the table (its current run only: the
    periods before it were seen by the machine that made it)."""
    now = datetime.now(UTC)
    hourly = launch_price(None, instance.instance_type, instance.region, spot=False)
    uptime = None
    if instance.state == "running" and instance.launched_at:
        uptime = max(0.0, (now - instance.launched_at.astimezone(UTC)).total_seconds())
    return InstanceView(
        name=instance.name, instance_id=instance.instance_id, state=instance.state,
        instance_type=instance.instance_type, region=instance.region, provider=instance.provider,
        host=instance.host, user=instance.user, lifecycle=instance.lifecycle, zone=instance.zone,
        uptime_seconds=uptime, hourly_usd=hourly,
        accrued_usd=round(uptime * hourly / 3600, 4) if uptime is not None and hourly is not None else None,
        managed_here=False, idle_reason="made on another machine: its keys are not here")


def _with_cluster(ctx: Context, provider: Provider, view: InstanceView) -> InstanceView:
    from .cluster import cluster_summary

    try:
        hourly = view.spot_hourly_usd if view.spot_hourly_usd is not None else view.hourly_usd
        summary = cluster_summary(ctx, provider, view.name, hourly if view.state == "running" else 0.0)
    except NbcloudError:
        return view  # the cluster is information here: `status` must not fail over it
    return replace(view, cluster=summary) if summary else view


def _view(ctx: Context, record: Record, instance: Instance | None) -> InstanceView:
    now = datetime.now(UTC)
    spec = stored_spec(record)
    uptime = None
    if instance is not None and instance.state == "running" and instance.launched_at:
        uptime = (now - _running_since(ctx, record, instance)).total_seconds()
    return InstanceView(
        name=record.name, instance_id=instance.instance_id if instance else record.instance_id,
        state=instance.state if instance else "gone", instance_type=record.instance_type, region=record.region,
        provider=record.provider, host=instance.host if instance else None, user=record.user,
        lifecycle=instance.lifecycle if instance else record.lifecycle, zone=instance.zone if instance else None,
        uptime_seconds=uptime, idle_stop_seconds=spec.idle_stop_seconds, gpus=(record.spec or {}).get("gpus"),
        **tunnel_fields(ctx, record), **cost_fields(ctx, record, spec, now),
        vscode=ssh_config.vscode_command(f"nb-{record.name}", record.user),
    )


def _spot_price_now(ctx: Context, provider: Provider, record: Record, instance: Instance | None) -> float | None:
    """Spot bills the spot price in force (DescribeSpotPriceHistory in the instance's zone), not on-demand's.

    A running spot instance's price that moved since it was recorded is recorded again (from now on the period
    bills at the new one), so `accrued`, `$/h` and the price shown agree.
    """
    if instance is None or instance.lifecycle != "spot":
        return None
    try:
        price = provider.spot_price(instance.instance_type, instance.zone)
    except NbcloudError:
        return None  # a price is information: `status` must not fail over it
    if price is not None and instance.state == "running":
        ctx.store.record_price(record.name, instance.instance_id, price)
    return price


def _running_since(ctx: Context, record: Record, instance: Instance) -> datetime:
    """When the current running period began. AWS resets LaunchTime at every start; moto (the sandbox) keeps the
    first launch's, so after a stop that this machine saw later than LaunchTime, its own record of the start wins."""
    launched = (instance.launched_at or datetime.now(UTC)).astimezone(UTC)
    events = [(at, state) for at, state, iid in ctx.store.events(record.name) if iid == instance.instance_id]
    stops = [at for at, state in events if state != "running" and at > launched]
    starts = [at for at, state in events if state == "running" and stops and at > stops[-1]]
    return starts[0] if starts else launched


def list_managed(ctx: Context, provider_name: str | None, region: str | None, profile: str | None) -> list[Instance]:
    return ctx.listing_provider(provider_name, region, profile).list_instances()


@dataclass(frozen=True)
class OrphanReport:
    orphans: list[TaggedResource]
    removed: list[str]
    #: unattached data volumes, snapshots, images: kept on purpose, but billing (`kind`, `id`, `monthly_usd` …)
    still_billing: list[dict[str, Any]] = field(default_factory=list)
    still_billing_monthly_usd: float = 0.0


def orphans(ctx: Context, provider_name: str | None, region: str | None, profile: str | None,
            fix: bool = False, confirm: Callable[[str], bool] = lambda _q: False) -> OrphanReport:
    """Anything tagged by nbcloud that no live instance owns (``fix`` deletes those), and what still bills with no
    instance using it: named data volumes, snapshots and images are kept on purpose, so with ``fix`` each goes only
    when ``confirm`` says yes for it."""
    provider = ctx.listing_provider(provider_name, region, profile)
    here = [i for i in interrupted_launches(ctx) if (i.provider, i.region) == (provider.name, provider.region)]
    removed = []
    if fix:  # an interrupted `up`: its whole launch goes, the way the next `up`/`down` of its name would do it
        for name in sorted({i.name for i in here}):
            with ctx.name_lock(name, wait=False):
                removed += [r for rec in recover_name(ctx, name) for r in rec.removed]
        here = []
    # instances too: those of launches that were interrupted, or rolled back before their instance showed up
    dead = {i.launch_id for i in here} | {i.launch_id for i in ctx.store.launches(outcomes=("rolled-back",))}
    resources = provider.tagged_resources()
    live_launches = {r.launch_id for r in resources if r.kind == "instance" and r.launch_id not in dead}
    data_volumes = {v.volume_id for v in provider.list_volumes() if v.tags.get(VOLUME_NAME_TAG)}
    found = [r for r in resources if r.launch_id in dead or (
        r.kind != "instance" and r.launch_id not in live_launches and r.resource_id not in data_volumes)]
    if fix:
        for resource in sorted(found, key=lambda r: r.kind != "instance"):  # instances first: they hold the rest
            provider.delete_resource(resource)
            removed.append(f"{resource.kind} {resource.resource_id}")
    billing = still_billing(provider)
    kept = []
    for item in billing:
        if fix and confirm(f"Delete {item['kind']} {item['name'] or item['id']} ({item['id']}, {item['size_gb']} GB, "
                           f"${item['monthly_usd']:.2f}/month) for good?"):
            remove_billing(provider, item)
            removed.append(f"{item['kind']} {item['id']}")
        else:
            kept.append(item)
    return OrphanReport(found, removed, kept, round(sum(i["monthly_usd"] for i in kept), 2))
