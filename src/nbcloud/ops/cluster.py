"""`cluster up|scale|down`: the notebook's instance runs the scheduler, worker instances join it over TLS.

Who does what:

* the notebook's instance NAME runs the engine's scheduler as a unit; its login user's engine config names the
  scheduler, so ``Client()`` in a notebook connects with no address typed;
* workers are launched from the same image in NAME's zone and subnet, install exactly NAME's ``pip freeze`` and are
  checked against it; they sit in the cluster's own security group, which admits only its members (NAME joins
  it), and are reached for setup over SSH *through* NAME (ProxyJump): no worker port is open to anyone else;
* keys: a CA per cluster made here (its key stays here); certificates travel over the pinned SSH sessions' stdin;
* idle and cost: each worker runs a watchdog that powers it off (which terminates it) after ``idle_minutes``
  without a scheduler connection, so NAME's idle stop (or its cost cap) ends the workers too; `status` counts
  the whole cluster's $/h. Workers that are gone are replaced by the next `cluster up`/`cluster scale`; a spot
  worker's interruption notice is acted on at once by the cluster's keeper (ops/cluster_keeper.py), which calls
  :func:`replace_noticed`.

Any failure while creating rolls back what this call made (workers, the group, NAME's group change, the unit).
"""

from __future__ import annotations

import json
import shlex
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from dataclasses import replace as replace_result
from pathlib import Path
from typing import Any

from ..cluster.certs import ClusterCerts, Identity, make_cluster_certs
from ..cluster.engine import Engine, FileSpec, Layout
from ..cluster.engines import get_engine
from ..cluster.onhost import DONE_MARKER
from ..cluster.plan import cluster_hourly, freeze_difference, scale_plan
from ..cluster.remote import extra_wheels_dir, install_command
from ..config import ensure_private_dir, write_private
from ..errors import ConflictError, RemoteError, UsageError
from ..models import cluster_tags
from ..providers.base import WorkerRequest
from ..providers.registry import cluster_machines
from ..remote.machine_root import py_rooted
from ..remote.units import VENV
from ..ssh import keys, session
from .context import Context, Progress, no_progress
from .keeper_process import cluster_dir
from .rollback import Rollback

__all__ = ["ClusterResult", "WorkerView", "cluster_dir", "cluster_down", "cluster_scale", "cluster_summary",
           "cluster_up", "load_state", "replace_noticed", "teardown"]

DEFAULT_IDLE_MINUTES = 15
MAX_WORKERS = 256  # more is a typo, not a cluster: `--workers 99999…` launched workers until killed


@dataclass(frozen=True)
class WorkerView:
    instance_id: str
    host: str | None
    state: str
    lifecycle: str
    instance_type: str
    hourly_usd: float | None = None


@dataclass(frozen=True)
class ClusterResult:
    name: str
    engine: str
    scheduler_address: str
    dashboard_url: str | None
    workers: list[WorkerView]
    hourly_usd: float | None
    connected: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    launched: list[str] = field(default_factory=list)


@dataclass
class ClusterState:
    """What this machine remembers of a cluster (the cloud's tags are the truth for its workers)."""

    engine: str
    group_id: str
    scheduler_ip: str
    scheduler_groups: list[str]
    desired: int
    instance_type: str
    spot: bool
    threads: int
    idle_minutes: int
    freeze: str
    dashboard_port: int | None = None


# local files --------------------------------------------------------------------------------------------------
_dir = cluster_dir


def load_state(ctx: Context, name: str) -> ClusterState | None:
    path = _dir(ctx, name) / "cluster.json"
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _save_state(ctx: Context, name: str, state: ClusterState) -> None:
    write_private(_dir(ctx, name) / "cluster.json", json.dumps(asdict(state), indent=1, sort_keys=True))


def _save_certs(ctx: Context, name: str, certs: ClusterCerts) -> None:
    d = ensure_private_dir(_dir(ctx, name))
    for file, text in {"ca.pem": certs.ca_cert_pem, "ca.key": certs.ca_key_pem, "worker.pem": certs.worker.cert_pem,
                       "worker.key": certs.worker.key_pem}.items():
        write_private(d / file, text)


def _worker_identity(ctx: Context, name: str) -> tuple[str, Identity]:
    d = _dir(ctx, name)
    return (d / "ca.pem").read_text(), Identity((d / "worker.pem").read_text(), (d / "worker.key").read_text())


def _forget(ctx: Context, name: str) -> None:
    import shutil

    shutil.rmtree(_dir(ctx, name), ignore_errors=True)


# ssh ------------------------------------------------------------------------------------------------------------
def _worker_alias(name: str, instance_id: str) -> str:
    return f"nbw-{name}-{instance_id}"


def _write_worker_ssh(ctx: Context, name: str, user: str, workers: list[Any]) -> Path:
    """An ssh config that reaches each worker through NAME (ProxyJump), pinning the cluster's host key."""
    d = _dir(ctx, name)
    host_key = keys.load_or_create_host_key(d, "workers")
    write_private(d / "known_hosts", f"nbw-{name} {host_key.public_blob}\n")
    lines = [f'Include "{ctx.paths.ssh_config}"', ""]
    for worker in workers:
        lines += [f"Host {_worker_alias(name, worker.instance_id)}", f"  HostName {worker.private_ip}",
                  f"  User {user}", f'  IdentityFile "{ctx.paths.keys_dir / name}"', "  IdentitiesOnly yes",
                  f'  UserKnownHostsFile "{d / "known_hosts"}"', "  StrictHostKeyChecking yes",
                  f"  HostKeyAlias nbw-{name}", f"  ProxyJump nb-{name}", "  ConnectTimeout 10", "  LogLevel ERROR",
                  ""]
    write_private(d / "ssh_config", "\n".join(lines))
    return d / "ssh_config"


def _uv(package_env: dict[str, str]) -> str:
    """Shell that sets UV (as the bootstrap finds it) with the provider's package environment exported."""
    env = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(package_env.items()))
    return (env + 'UV="${NBCLOUD_UV:-}"; [ -n "$UV" ] || { [ -x /opt/nbcloud/bin/uv ] && UV=/opt/nbcloud/bin/uv; } '
            '|| UV=$(command -v uv); ')


def _files_payload(files: list[FileSpec], run: list[list[str]]) -> bytes:
    return json.dumps({"files": [[f.path, f.mode, f.owner, f.content] for f in files], "run": run}).encode()


# the scheduler --------------------------------------------------------------------------------------------------
def _install_engine(ctx: Context, provider: Any, name: str, engine: Engine, progress: Progress) -> str:
    """Install the engine's packages into NAME's venv (from NAME's own package source); returns its freeze."""
    extra = extra_wheels_dir(engine.name)
    prepare = getattr(provider, "prepare_packages", None)
    if prepare is not None:  # a cloud without an index for its instances (the sandbox) stages the wheels first
        prepare(extra, list(engine.requirements()), progress)
    pkgs = " ".join(shlex.quote(p) for p in engine.requirements())
    links = '--no-index --find-links "$NBCLOUD_FIND_LINKS" --find-links "$NBCLOUD_FIND_LINKS/' + extra + '"'
    script = (_uv(provider.package_env) + f'L=""; [ "${{NBCLOUD_NO_INDEX:-0}}" = 1 ] && L=\'{links}\'; '
              f'eval sudo -E "$UV" pip install -q -p {VENV} $L {pkgs} && "$UV" pip freeze -p {VENV}')
    progress(f"installing {engine.name} into {name}'s Python environment")
    result = session.run(ctx.paths.ssh_config, f"nb-{name}", f"bash -c {shlex.quote(script)}", timeout=600)
    return result.stdout


def _start_scheduler(ctx: Context, name: str, engine: Engine, layout: Layout, certs: ClusterCerts) -> None:
    unit, _ = engine.scheduler_unit(layout)
    run = [["systemctl", "daemon-reload"], ["systemctl", "enable", unit], ["systemctl", "restart", unit]]
    session.run(ctx.paths.ssh_config, f"nb-{name}", install_command(),
                input=_files_payload(engine.scheduler_files(layout, certs), run), timeout=120)


def _stop_scheduler(ctx: Context, name: str, engine: Engine, layout: Layout) -> None:
    unit, _ = engine.scheduler_unit(layout)
    session.run(ctx.paths.ssh_config, f"nb-{name}",
                f"sudo systemctl disable --now {unit}; sudo rm -f /etc/systemd/system/{unit}; "
                f"rm -rf {layout.cert_dir} {layout.home}/.config/dask/distributed.yaml", timeout=60, check=False)


def _probe(ctx: Context, name: str, engine: Engine, expected: int, timeout: float,
           hosts: tuple[str, ...] = ()) -> dict[str, Any]:
    result = session.run(ctx.paths.ssh_config, f"nb-{name}", f"{VENV}/bin/python -",
                         input=engine.probe(expected, timeout, hosts).encode(), timeout=timeout + 90, check=False)
    try:
        info = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RemoteError(f"the {engine.name} scheduler on {name} does not answer: {detail}",
                          f"`nbcloud ssh {name} -- tail /var/log/nbcloud/cluster-scheduler.log`") from None
    return dict(info)


# workers ----------------------------------------------------------------------------------------------------------
def _launch_workers(ctx: Context, provider: Any, name: str, record: Any, engine: Engine, layout: Layout,
                    state: ClusterState, count: int, rollback: Rollback, progress: Progress) -> list[Any]:
    """Launch ``count`` workers (each one's undo registered at once), wait until they run."""
    from ..cluster.dask import WATCHDOG, WATCHDOG_CONFIG, WORKER_LAUNCHER
    from ..cluster.remote import WATCHDOG_SOURCE, render_worker_boot, render_worker_user_data

    scheduler = provider.find(name)
    subnet_id, _vpc = cluster_machines(provider).subnet_of(provider, scheduler.instance_id)
    host_key = keys.load_or_create_host_key(_dir(ctx, name), "workers")
    image_id = scheduler.image_id
    launched: list[Any] = []
    for _ in range(count):
        worker_name = f"{name}-w-{uuid.uuid4().hex[:6]}"
        files = {WORKER_LAUNCHER: engine.worker_launcher(layout, worker_name),  # type: ignore[attr-defined]
                 WATCHDOG: WATCHDOG_SOURCE, WATCHDOG_CONFIG: engine.watchdog_config(layout),  # type: ignore[attr-defined]
                 **engine.worker_extra_files()}
        boot = render_worker_boot(layout, worker_name, state.freeze, dict(provider.package_env), files,
                                  engine.worker_units(layout), extra_wheels_dir(engine.name))
        request = WorkerRequest(
            client_token=f"nbcloud-{worker_name}", instance_type=state.instance_type, image_id=image_id,
            key_name=scheduler.key_name, group_id=state.group_id,
            user_data=render_worker_user_data(boot, host_key.private_openssh, host_key.public_openssh),
            zone=scheduler.zone, subnet_id=subnet_id, spot=state.spot, disk_gb=int((record.spec or {}).get(
                "disk_gb") or 30), tags=cluster_tags(name, record.launch_id, "worker"))
        progress(f"launching worker {len(launched) + 1}/{count} ({state.instance_type}"
                 f"{', spot' if state.spot else ''})")
        worker = cluster_machines(provider).run_worker(provider, request)
        launched.append(worker)
        rollback.add(f"worker {worker.instance_id}", lambda iid=worker.instance_id: _end_workers(provider, [iid]))
    running = []
    for worker in launched:
        running.append(provider.wait_running(worker.instance_id, timeout=600))
        progress(f"worker {worker.instance_id} is running")
    return running


def _end_workers(provider: Any, instance_ids: list[str]) -> None:
    cluster_machines(provider).terminate(provider, instance_ids)
    for iid in instance_ids:
        provider.wait_gone(iid, "terminated", 600)


def _prepare_worker(ctx: Context, name: str, cfg: Path, worker: Any, engine: Engine, layout: Layout,
                    state: ClusterState, package_env: dict[str, str], progress: Progress = no_progress) -> None:
    """Through NAME: wait for the worker's install, check its environment is NAME's, hand it its certificate."""
    alias = _worker_alias(name, worker.instance_id)
    session.wait_ssh(cfg, alias, timeout=300, interval=0.5)
    progress(f"worker {worker.instance_id}: SSH answers, waiting for its packages")
    # one session (each one through NAME is two handshakes): wait for the install, then list what it installed
    freeze_cmd = _uv(package_env) + f"$UV pip freeze -p {VENV}"
    wait = (f"for i in $(seq 1 4500); do [ -e {DONE_MARKER} ] && break; sleep 0.2; done; [ -e {DONE_MARKER} ] "
            f"|| exit 3; bash -c {shlex.quote(freeze_cmd)}")
    done = session.run(cfg, alias, wait, timeout=960, check=False)
    if done.returncode == 3:
        tail = session.run(cfg, alias, "sudo tail -n 3 /var/log/nbcloud/cluster-boot.log", check=False).stdout
        raise RemoteError(f"worker {worker.instance_id} did not finish its setup: {' | '.join(tail.splitlines())}",
                          "see /var/log/nbcloud/cluster-boot.log on the worker")
    if done.returncode != 0:
        raise RemoteError(f"worker {worker.instance_id}: listing its packages failed: "
                          f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    freeze = done.stdout
    difference = freeze_difference(state.freeze, freeze)
    if difference:
        raise ConflictError(f"worker {worker.instance_id}'s Python environment differs from {name}'s "
                            f"({difference})", "check the instances' package source, then `nbcloud cluster up` again")
    ca, identity = _worker_identity(ctx, name)
    session.run(cfg, alias, install_command(), input=_files_payload(engine.worker_files(layout, ca, identity), []),
                timeout=60)
    progress(f"worker {worker.instance_id}: same packages as {name}, certificate in place")


def _spot_noticed(ctx: Context, name: str, record: Any, workers: list[Any]) -> set[str]:
    """Spot workers whose watchdog saw the interruption notice (they already left the cluster): to replace now,
    within the notice window, not after the reclaim."""
    from ..cluster.onhost import SPOT_NOTICE_MARKER

    running = [w for w in workers if w.state == "running"]
    if not running:
        return set()
    cfg = _write_worker_ssh(ctx, name, record.user, workers)

    def seen(worker: Any) -> bool:
        try:
            done = session.run(cfg, _worker_alias(name, worker.instance_id), f"test -e {SPOT_NOTICE_MARKER}",
                               timeout=20, check=False, connect_timeout=5)
        except RemoteError:
            return False
        return done.returncode == 0

    with ThreadPoolExecutor(max_workers=min(8, len(running))) as pool:
        return {w.instance_id for w, hit in zip(running, pool.map(seen, running), strict=True) if hit}


def _join(ctx: Context, provider: Any, name: str, record: Any, engine: Engine, layout: Layout,
          state: ClusterState, count: int, rollback: Rollback, progress: Progress) -> list[Any]:
    workers = _launch_workers(ctx, provider, name, record, engine, layout, state, count, rollback, progress)
    if not workers:
        return []
    every = cluster_machines(provider).list_workers(provider, name)
    cfg = _write_worker_ssh(ctx, name, record.user, every)
    progress(f"setting up {len(workers)} worker(s) through {name} (same packages, TLS certificate)")
    with ThreadPoolExecutor(max_workers=min(8, len(workers))) as pool:
        for future in [pool.submit(_prepare_worker, ctx, name, cfg, w, engine, layout, state,
                                   dict(provider.package_env), progress) for w in workers]:
            future.result()
    return workers


def _layout(record: Any, state: ClusterState, name: str) -> Layout:
    return Layout(name=name, scheduler_ip=state.scheduler_ip, login_user=record.user,
                  worker_threads=state.threads, idle_minutes=state.idle_minutes)


# use cases ----------------------------------------------------------------------------------------------------------
def _scheduler(ctx: Context, name: str) -> tuple[Any, Any, Any]:
    record = ctx.record(name)
    provider = ctx.provider_for(record)
    if getattr(provider, "jupyter_on_address", False):  # a loopback sandbox: no namespaces, no groups to enforce
        raise UsageError("clusters need the sandbox in netns mode (run it as root)", "`nbcloud sandbox reset`, then "
                         "`sudo nbcloud sandbox start`")
    instance = provider.find(name)
    if instance is None or instance.state != "running":
        state = instance.state if instance else "gone"
        raise ConflictError(f"instance {name!r} is {state}", f"start it first: `nbcloud up {name}`")
    if not instance.private_ip:
        raise ConflictError(f"instance {name!r} has no private address", "clusters need an instance in a VPC")
    return record, provider, instance


def cluster_up(ctx: Context, name: str, workers: int, *, instance_type: str | None = None, spot: bool = False,
               threads: int = 1, idle_minutes: int = DEFAULT_IDLE_MINUTES, engine_name: str = "dask",
               progress: Progress = no_progress, timeout: float = 600) -> ClusterResult:
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be 1 to {MAX_WORKERS}", "e.g. --workers 2")
    if threads < 1:
        raise UsageError("--worker-threads must be at least 1")
    if idle_minutes < 1:
        raise UsageError("the workers' idle limit must be at least 1 minute")
    if load_state(ctx, name) is not None:  # an existing cluster: re-counted, as `cluster scale` does
        return cluster_scale(ctx, name, workers, progress=progress, timeout=timeout)
    with ctx.name_lock(name):
        if load_state(ctx, name) is not None:  # made meanwhile by another `cluster up`
            raise ConflictError(f"{name!r} got a cluster meanwhile", f"`nbcloud cluster scale {name} {workers}`")
        record, provider, instance = _scheduler(ctx, name)
        engine = get_engine(engine_name)
        t0 = time.monotonic()
        rollback = Rollback(progress)
        try:
            freeze = _install_engine(ctx, provider, name, engine, progress)
            certs = make_cluster_certs(name)
            _save_certs(ctx, name, certs)
            rollback.add("local cluster files", lambda: _forget(ctx, name))
            machines = cluster_machines(provider)
            original = machines.instance_groups(provider, instance.instance_id)
            _subnet, vpc_id = machines.subnet_of(provider, instance.instance_id)
            progress("security group (cluster members only)")
            group_id = machines.create_cluster_group(
                provider, name, [(engine.scheduler_port, engine.scheduler_port), engine.worker_ports],
                cluster_tags(name, record.launch_id, "cluster-group"), vpc_id)
            rollback.add(f"security group {group_id}", lambda: machines.delete_group(provider, group_id))
            machines.set_instance_groups(provider, instance.instance_id, [*original, group_id])
            rollback.add(f"{name}'s groups", lambda: machines.set_instance_groups(provider, instance.instance_id,
                                                                                  original))
            state = ClusterState(engine=engine.name, group_id=group_id, scheduler_ip=instance.private_ip,
                                 scheduler_groups=original, desired=workers,
                                 instance_type=instance_type or instance.instance_type, spot=spot, threads=threads,
                                 idle_minutes=idle_minutes, freeze=freeze,
                                 dashboard_port=_dashboard_port(ctx, name))
            layout = _layout(record, state, name)
            progress(f"starting the {engine.name} scheduler on {name} (TLS, {engine.address(layout)})")
            _start_scheduler(ctx, name, engine, layout, certs)
            rollback.add("scheduler unit", lambda: _stop_scheduler(ctx, name, engine, layout))
            _save_state(ctx, name, state)
            _join(ctx, provider, name, record, engine, layout, state, workers, rollback, progress)
            progress(f"waiting for {workers} worker(s) to connect")
            info = _probe(ctx, name, engine, workers, timeout)
            if len(info["workers"]) < workers:
                raise RemoteError(f"only {len(info['workers'])} of {workers} workers connected in {timeout:g} s",
                                  "see /var/log/nbcloud/cluster-worker.log on a worker")
        except BaseException as exc:
            rollback.undo_after(exc, "`nbcloud cluster down` then `nbcloud doctor --orphans --fix` remove them")
            raise
        result = _result(ctx, provider, record, name, state, info, seconds={"connected": time.monotonic() - t0})
    _ensure_keeper(ctx, name, state)
    return result


def cluster_scale(ctx: Context, name: str, workers: int, *, progress: Progress = no_progress,
                  timeout: float = 600) -> ClusterResult:
    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"a cluster has 0 to {MAX_WORKERS} workers", "e.g. `nbcloud cluster scale NAME 2`")
    with ctx.name_lock(name):
        result = _scale_locked(ctx, name, workers, progress, timeout)
    _ensure_keeper(ctx, name, load_state(ctx, name))
    return result


def _ensure_keeper(ctx: Context, name: str, state: ClusterState | None) -> None:
    """Spot clusters get their keeper (it replaces a noticed worker with no command typed); it ends with NAME."""
    if state is not None and state.spot:
        from .keeper_process import start_keeper, wait_watching

        start_keeper(ctx, name)
        wait_watching(ctx, name)  # when `cluster up` returns, a notice is acted on at once


def replace_noticed(ctx: Context, name: str, leaving: set[str], *, progress: Progress = no_progress,
                    timeout: float = 600) -> ClusterResult | None:
    """Replace spot workers that got the interruption notice (the keeper calls this at once): launch as many as the
    cluster is short of ``desired`` without them, wait until the new ones joined the scheduler, then terminate the
    leaving ones (they already retired from the engine, their results moved; the reclaim would end them anyway)."""
    with ctx.name_lock(name):
        state = load_state(ctx, name)
        if state is None:
            raise ConflictError(f"{name!r} has no cluster", "nothing to replace")
        record, provider, _instance = _scheduler(ctx, name)
        engine = get_engine(state.engine)
        layout = _layout(record, state, name)
        t0 = time.monotonic()
        current = cluster_machines(provider).list_workers(provider, name)
        alive = [w for w in current if w.state in ("pending", "running") and w.instance_id not in leaving]
        ending = [w.instance_id for w in current if w.instance_id in leaving]
        launch = max(0, state.desired - len(alive))
        if not launch and not ending:
            return None  # replaced already (a replayed notice), or scaled down meanwhile
        rollback = Rollback(progress)
        try:
            joined = _join(ctx, provider, name, record, engine, layout, state, launch, rollback, progress)
            hosts = tuple(w.private_ip for w in joined if w.private_ip)
            progress(f"waiting for {', '.join(hosts) or 'the workers'} to join the scheduler")
            info = _probe(ctx, name, engine, state.desired, timeout, hosts)
            if not set(hosts) <= {a.split("://")[-1].rsplit(":", 1)[0] for a in info["workers"]}:
                raise RemoteError(f"the replacement worker(s) did not join {name}'s scheduler in {timeout:g} s",
                                  "see /var/log/nbcloud/cluster-worker.log on a worker")
        except BaseException as exc:
            rollback.undo_after(exc, "`nbcloud cluster down` then `nbcloud doctor --orphans --fix` remove them")
            raise
        seconds = {"joined": time.monotonic() - t0}
        cluster_machines(provider).terminate(provider, ending)
        result = _result(ctx, provider, record, name, state, info, replaced=ending, seconds=seconds)
        return replace_result(result, launched=[w.instance_id for w in joined])


def _scale_locked(ctx: Context, name: str, workers: int, progress: Progress, timeout: float) -> ClusterResult:
    state = load_state(ctx, name)
    if state is None:
        raise ConflictError(f"{name!r} has no cluster", f"make one: `nbcloud cluster up {name} --workers N`")
    record, provider, _instance = _scheduler(ctx, name)
    engine = get_engine(state.engine)
    layout = _layout(record, state, name)
    t0 = time.monotonic()
    current = cluster_machines(provider).list_workers(provider, name)
    noticed = _spot_noticed(ctx, name, record, current) if state.spot else set()
    plan = scale_plan([(w.instance_id, "notice" if w.instance_id in noticed else w.state) for w in current], workers)
    if plan.terminate:
        progress(f"ending worker(s) {', '.join(plan.terminate)}")
        _end_workers(provider, list(plan.terminate))
    state.desired = workers
    _save_state(ctx, name, state)
    rollback = Rollback(progress)
    try:
        _join(ctx, provider, name, record, engine, layout, state, plan.launch, rollback, progress)
        info = _probe(ctx, name, engine, workers, timeout if plan.launch else 10)
    except BaseException as exc:
        rollback.undo_after(exc, "`nbcloud cluster down` then `nbcloud doctor --orphans --fix` remove them")
        raise
    return _result(ctx, provider, record, name, state, info, replaced=list(plan.replaced),
                   seconds={"connected": time.monotonic() - t0})


def cluster_down(ctx: Context, name: str, *, progress: Progress = no_progress) -> dict[str, Any]:
    with ctx.name_lock(name):
        record = ctx.record(name)
        return teardown(ctx, ctx.provider_for(record), name, record, progress)


def teardown(ctx: Context, provider: Any, name: str, record: Any, progress: Progress = no_progress) -> dict[str, Any]:
    """Workers (found by tag), NAME's membership, the group(s), the scheduler unit, the local files. Also the
    first step of `down NAME`."""
    from .keeper_process import stop_keeper

    stop_keeper(ctx, name)  # first: it must not launch a replacement for a worker this is about to end
    state = load_state(ctx, name)
    workers = [w.instance_id for w in cluster_machines(provider).list_workers(provider, name)] if getattr(
        provider, "session", None) is not None else []
    if state is None and not workers:
        return {"name": name, "workers_terminated": [], "groups_deleted": []}
    if workers:
        progress(f"terminating {len(workers)} worker(s)")
        _end_workers(provider, workers)
    groups = _cluster_groups(provider, name)
    instance = provider.find(name)
    if instance is not None and instance.state not in ("terminated", "shutting-down"):
        current = cluster_machines(provider).instance_groups(provider, instance.instance_id)
        kept = [g for g in current if g not in groups]
        if kept != current and kept:
            cluster_machines(provider).set_instance_groups(provider, instance.instance_id, kept)
        if state is not None and instance.state == "running":
            from .costs import current_hourly

            _stop_scheduler(ctx, name, get_engine(state.engine), _layout(record, state, name))
            _agent_hourly(ctx, name, record, current_hourly(ctx, name))  # the cap counts NAME alone again
    for group_id in groups:
        progress(f"deleting security group {group_id}")
        cluster_machines(provider).delete_group(provider, group_id)
    _forget(ctx, name)
    return {"name": name, "workers_terminated": workers, "groups_deleted": groups}


def _cluster_groups(provider: Any, name: str) -> list[str]:
    return cluster_machines(provider).cluster_groups(provider, name)


def _agent_hourly(ctx: Context, name: str, record: Any, hourly: float | None) -> None:
    """NAME's agent caps cost at `--max-cost` by hourly rate x NAME's running time: with the whole cluster's rate
    the cap counts the workers too (an upper bound: workers never outlive NAME's running time by more than their
    idle limit, and a cap errs towards stopping early). NAME's stop then ends the workers (their watchdogs)."""
    if hourly is None:
        return
    path = f"/home/{record.user}/.config/nbcloud/agent.json"
    code = (f"import json,os;p={py_rooted(path)};"
            "d=json.load(open(p)) if os.path.exists(p) else {};"
            f"d['hourly_usd']={float(hourly)!r};t=p+'.tmp';open(t,'w').write(json.dumps(d,sort_keys=True));"
            "os.chmod(t,0o600);os.replace(t,p)")
    session.run(ctx.paths.ssh_config, f"nb-{name}", "python3 -c " + shlex.quote(code), timeout=30, check=False)


# views ------------------------------------------------------------------------------------------------------------
def _worker_views(provider: Any, workers: list[Any], state: ClusterState) -> list[WorkerView]:
    from ..money.quotes import launch_price

    price = launch_price(provider, state.instance_type, provider.region, spot=state.spot)
    return [WorkerView(w.instance_id, w.private_ip, w.state, w.lifecycle, w.instance_type,
                       price if w.state in ("pending", "running") else 0.0) for w in workers]


DASHBOARD_OFFSET = 2000  # the dashboard's local port: Jupyter's + this (the gateway's is + 1000)


def _dashboard_port(ctx: Context, name: str) -> int:
    from ..config import local_port_base
    from ..ssh.tunnel import port_is_free

    record = ctx.store.get(name)
    port = ((record.local_port if record and record.local_port else None) or local_port_base()) + DASHBOARD_OFFSET
    taken = ctx.store.ports_in_use()
    while port in taken or not port_is_free(port):
        port += 1
    return port


def dashboard_forward(ctx: Context, name: str, jupyter_local_port: int) -> tuple[int, int] | None:
    """(local port, instance port) of the cluster's dashboard for `connect`'s tunnel; None without a cluster."""
    state = load_state(ctx, name)
    if state is None:
        return None
    if not state.dashboard_port:
        state.dashboard_port = _dashboard_port(ctx, name)
        _save_state(ctx, name, state)
    return state.dashboard_port, get_engine(state.engine).dashboard_port


def _dashboard_url(ctx: Context, name: str, state: ClusterState) -> str | None:
    return f"http://127.0.0.1:{state.dashboard_port}/status" if state.dashboard_port else None


def _result(ctx: Context, provider: Any, record: Any, name: str, state: ClusterState, info: dict[str, Any],
            replaced: list[str] | None = None, seconds: dict[str, float] | None = None) -> ClusterResult:
    from .costs import current_hourly

    views = _worker_views(provider, cluster_machines(provider).list_workers(provider, name), state)
    hourly = cluster_hourly(current_hourly(ctx, name), [v.hourly_usd for v in views])
    _agent_hourly(ctx, name, record, hourly)
    return ClusterResult(
        name=name, engine=state.engine, scheduler_address=info.get("address") or "", workers=views,
        dashboard_url=_dashboard_url(ctx, name, state), hourly_usd=hourly,
        connected=list(info.get("workers", [])), replaced=replaced or [], seconds=seconds or {})


def cluster_summary(ctx: Context, provider: Any, name: str, scheduler_hourly: float | None) -> dict[str, Any] | None:
    """`status`'s view of NAME's cluster (None: it has none): workers, their state and price, the total $/h."""
    state = load_state(ctx, name)
    if state is None:
        return None
    views = _worker_views(provider, cluster_machines(provider).list_workers(provider, name), state)
    engine = get_engine(state.engine)
    from .keeper_process import keeper_view

    return {"engine": state.engine, "desired": state.desired, "keeper": keeper_view(ctx, name),
            "scheduler_address": f"tls://{state.scheduler_ip}:{engine.scheduler_port}",
            "dashboard_url": _dashboard_url(ctx, name, state), "workers": [asdict(v) for v in views],
            "hourly_usd": cluster_hourly(scheduler_hourly, [v.hourly_usd for v in views])}
