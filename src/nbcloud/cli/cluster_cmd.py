"""cluster up|scale|down: Dask workers for the notebook's instance (thin: one library call per command)."""

from __future__ import annotations

from typing import Any

import click

from .complete import instance_names
from .output import emit, json_option, progress


def _ctx():  # type: ignore[no-untyped-def]
    from ..ops import Context

    return Context.create()


def _text(r: Any) -> str:
    lines = [f"{r.name}: {r.engine} cluster, scheduler {r.scheduler_address}, {len(r.connected)} worker(s) connected"
             + (f", ${r.hourly_usd:.4f}/h in all" if r.hourly_usd is not None else "")]
    for w in r.workers:
        price = f"${w.hourly_usd:.4f}/h" if w.hourly_usd is not None else "-"
        lines.append(f"  {w.instance_id}  {w.host or '-':15}  {w.state:13} {w.lifecycle:9} {w.instance_type}  {price}")
    if r.replaced:
        lines.append(f"  replaced: {', '.join(r.replaced)}")
    lines.append("  in a notebook: `from dask.distributed import Client; client = Client()`"
                 + (f" · dashboard: {r.dashboard_url}" if r.dashboard_url else
                    f" · dashboard: `nbcloud connect {r.name}`"))
    return "\n".join(lines)


@click.group()
def cluster() -> None:
    """Dask workers for an instance's notebook: TLS only, reachable only from the cluster's own group."""


@cluster.command("up")
@click.argument("name", shell_complete=instance_names)
@click.option("--workers", "workers", type=int, required=True, help="How many worker instances.")
@click.option("-t", "--type", "instance_type", default=None, help="Workers' instance type (default: NAME's).")
@click.option("--spot", is_flag=True,
              help="Spot workers: on a worker's interruption notice a keeper on this machine replaces it at once.")
@click.option("--worker-threads", type=int, default=1, show_default=True, help="Threads per worker.")
@click.option("--idle-minutes", type=int, default=15, show_default=True,
              help="A worker with no scheduler connection this long powers itself off (and is terminated).")
@json_option
def up(name: str, workers: int, instance_type: str | None, spot: bool, worker_threads: int, idle_minutes: int,
       as_json: bool) -> None:
    """Run NAME's scheduler and launch (or re-count) its workers."""
    from ..ops.cluster import cluster_up

    with progress(f"cluster for {name}", as_json) as step:
        result = cluster_up(_ctx(), name, workers, instance_type=instance_type, spot=spot, threads=worker_threads,
                            idle_minutes=idle_minutes, progress=step)
    emit(result, as_json, _text)


@cluster.command("scale")
@click.argument("name", shell_complete=instance_names)
@click.argument("workers", type=int)
@json_option
def scale(name: str, workers: int, as_json: bool) -> None:
    """Grow or shrink NAME's cluster to WORKERS workers (replacing any that are gone)."""
    from ..ops.cluster import cluster_scale

    with progress(f"scaling {name}'s cluster to {workers}", as_json) as step:
        result = cluster_scale(_ctx(), name, workers, progress=step)
    emit(result, as_json, _text)


@cluster.command("down")
@click.argument("name", shell_complete=instance_names)
@json_option
def down(name: str, as_json: bool) -> None:
    """Terminate NAME's workers and remove the cluster (NAME itself keeps running)."""
    from ..ops.cluster import cluster_down

    with progress(f"removing {name}'s cluster", as_json) as step:
        result = cluster_down(_ctx(), name, progress=step)
    emit(result, as_json, lambda r: f"{r['name']}: {len(r['workers_terminated'])} worker(s) terminated, "
                                    f"{len(r['groups_deleted'])} security group(s) deleted")
