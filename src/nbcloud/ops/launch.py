"""`up`: from nothing (or a stopped instance) to a reachable Jupyter, rolling back whatever a failed launch made.

The launch is written down before its first cloud call and every resource is tagged with the instance name and
that launch id; any exception, Ctrl-C and SIGTERM included, removes what the launch made before it propagates, and
a launch whose process died (SIGKILL) is removed by the next command (:mod:`nbcloud.ops.launches`).
"""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import CapacityError, ConflictError, Interrupted, NbcloudError, QuotaError, RemoteError
from ..models import (
    LAUNCH_TAG,
    MANAGED_TAG,
    NAME_TAG,
    ROLE_TAG,
    VOLUME_NAME_TAG,
    ImageInfo,
    Instance,
    InstanceSpec,
    InstanceTypeInfo,
    Volume,
)
from ..money.quotes import launch_price, require_price_for_cap, start_price
from ..providers.base import IngressRule, LaunchRequest, Provider, TaggedResource, manages_machines
from ..remote.spec import LOGIN_USER
from ..ssh import config as ssh_config
from ..ssh import keys, session
from ..state import LaunchIntent, Record
from .bootlog import BootLog, save_bootstrap_log
from .context import Context, Progress, no_progress
from .hostkey import rotate_host_key
from .inplace import apply_in_place, plan_in_place, refuse_cap_below_cost, refuse_elsewhere, retype
from .instances import (
    DATA_DEVICE,
    bootstrap_spec,
    ingress_rules,
    parse_data_volume,
    secrets_script,
    spec_json,
    wait_ready,
    write_access,
)
from .launches import Recovery, describe_recovery, key_pair_name, recover_name, sweep_launch
from .lifecycle import down_unlocked, start_instance, stored_spec
from .public import check_password, prepare_tls, stored_password_hash
from .rollback import Rollback, main_thread
from .storage import move_volume

__all__ = ["DATA_DEVICE", "DryRun", "Rollback", "UpResult", "parse_data_volume", "up"]


@dataclass(frozen=True)
class UpResult:
    name: str
    instance_id: str
    state: str
    host: str | None
    user: str
    ssh_alias: str
    provider: str
    region: str
    instance_type: str
    gpus: int
    reused: bool
    data_volume_id: str | None = None
    changed: list[str] = field(default_factory=list)  # reused: the options applied to it in place
    url: str | None = None
    local_port: int | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DryRun:
    name: str
    user_data_bytes: int
    bootstrap: str


def dry_run(ctx: Context, spec: InstanceSpec) -> DryRun:
    """Render what `up` would send, with placeholder keys: nothing is created, no cloud call is made."""
    from ..remote.bootstrap import render_bootstrap
    from ..remote.userdata import render_user_data

    placeholder = keys.KeyPair("<host private key, generated at launch>", "ssh-ed25519 <generated-at-launch>")

    from types import SimpleNamespace

    offline = SimpleNamespace(package_env={}, login_user=LOGIN_USER)
    boot = bootstrap_spec(spec, offline, placeholder,  # type: ignore[arg-type]
                           "vol-<data>" if spec.data_volume else None, None)
    return DryRun(spec.name, len(render_user_data(boot)), render_bootstrap(boot))


def up(ctx: Context, spec: InstanceSpec, *, provider_name: str | None = None, region: str | None = None,
       profile: str | None = None, progress: Progress = no_progress, wait_jupyter: bool = True,
       ssh_timeout: float = 300, ready_timeout: float = 900, password: str | None = None,
       given: frozenset[str] = frozenset(), confirm: Callable[[str], bool] = lambda _q: False,
       keep_on_failure: bool = False) -> UpResult:
    """``password``: public mode's Jupyter password (hashed here, only the argon2 hash reaches the instance).

    ``given``: the spec fields the user set (not defaults); on an existing instance they are applied in place or
    refused (:mod:`nbcloud.ops.inplace`). ``confirm``: asks the user (a changed instance type).
    ``keep_on_failure``: a launch that fails once its instance exists keeps it and its record, for debugging.
    """
    with ctx.name_lock(spec.name):
        for recovery in recover_name(ctx, spec.name, progress):  # an earlier `up NAME` that was killed
            if not recovery.complete:
                raise RemoteError(f"an interrupted earlier launch could not be undone: {describe_recovery(recovery)}",
                                  f"retry `nbcloud up {spec.name}` or `nbcloud down {spec.name}` later")
        existing = ctx.store.get(spec.name)
        if existing is not None:
            refuse_elsewhere(existing, provider_name, region)
            return _reuse(ctx, existing, spec, progress, wait_jupyter, ssh_timeout, ready_timeout, given, confirm)
        provider = ctx.provider(provider_name, region, profile)
        progress(f"checking access to {provider.name} ({provider.region})")
        provider.check_access()
        found = provider.find(spec.name)
        if found is not None:
            raise ConflictError(
                f"an instance named {spec.name!r} ({found.instance_id}, {found.state}) exists in {provider.region} "
                "but its keys are not on this machine",
                "use another name, or remove it from the machine that made it (`nbcloud down`)")
        password_hash = _public_password_hash(spec, password)  # before anything is made: fail fast
        ssh_config.ensure_include(ctx.paths)  # an unwritable ~/.ssh/config refuses before anything is made
        return _launch(ctx, provider, spec, profile, progress, wait_jupyter, ssh_timeout, ready_timeout,
                       password_hash, keep_on_failure)


def _public_password_hash(spec: InstanceSpec, password: str | None) -> str | None:
    if not spec.public:
        return None
    from ..remote.secrets import hash_password

    return hash_password(check_password(password))


@dataclass
class _Launch:
    """One launch in progress: what it is for, and what it has made so far (its undo list).

    Each step registers what it made here as soon as the cloud answered (:meth:`made_resource`); on any end but
    success :func:`_launch_failed` undoes exactly that, plus whatever carries the launch id (the instance, which is
    recorded on the launch itself: :func:`_run_instance`).
    """

    ctx: Context
    provider: Provider
    spec: InstanceSpec
    progress: Progress
    launch_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    made: list[TaggedResource] = field(default_factory=list)  # known made: the rollback need not find it by tag
    reached_ssh: bool = False  # the instance answered: a failure after that has a bootstrap log to keep
    timings: dict[str, float] = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)

    @property
    def tags(self) -> dict[str, str]:
        return {NAME_TAG: self.spec.name, LAUNCH_TAG: self.launch_id, MANAGED_TAG: "true", **dict(self.spec.tags)}

    def made_resource(self, kind: str, resource_id: str) -> None:
        """Register the undo of a resource this launch just made."""
        self.made.append(TaggedResource(kind, resource_id, self.spec.name, self.launch_id))

    def mark(self, step: str) -> None:
        self.timings[step] = time.monotonic() - self.t0


@dataclass(frozen=True)
class _Checked:
    """What the launch needs, looked up before anything is made."""

    itype: InstanceTypeInfo
    image: ImageInfo
    rules: list[IngressRule]
    volume_spec: tuple[str, int] | None
    found_volume: Volume | None


def _check(ctx: Context, provider: Provider, spec: InstanceSpec, progress: Progress) -> _Checked:
    """Type, image, price, rules and data volume: anything wrong refuses the launch before it makes anything."""
    itype = provider.instance_type(spec.instance_type)
    for fallback in spec.fallback_types:  # validated before anything is made
        provider.instance_type(fallback)
    require_price_for_cap(provider, spec.instance_type, spec.max_cost_usd)  # a cap must know what an hour costs
    image = provider.image(spec.image)
    progress(f"{itype.describe()} · image {image.name or image.image_id}")
    rules = ingress_rules(ctx, provider, spec)
    volume_spec = parse_data_volume(spec.data_volume, spec.name)
    # looked up before anything is made: a volume in use, or a cloud without volumes, leaves nothing behind
    found_volume = provider.find_volume(volume_spec[0]) if volume_spec else None
    if found_volume is not None and found_volume.attached_to:
        raise ConflictError(f"data volume {found_volume.name!r} is attached to {found_volume.attached_to}",
                            "stop using it there first (`nbcloud down` that instance)")
    return _Checked(itype, image, rules, volume_spec, found_volume)


def _launch(ctx: Context, provider: Provider, spec: InstanceSpec, profile: str | None, progress: Progress,
            wait_jupyter: bool, ssh_timeout: float, ready_timeout: float,
            password_hash: str | None = None, keep_on_failure: bool = False) -> UpResult:
    """Make the instance. Crash-safe: the launch is written down (durably) before its first cloud call, every
    resource carries its launch id, and any end but success undoes it here, or in the next command if this process
    dies (:mod:`nbcloud.ops.launches`)."""
    checked = _check(ctx, provider, spec, progress)
    run = _Launch(ctx, provider, spec, progress)
    with _interrupts_raise():
        try:
            ctx.store.begin_launch(LaunchIntent(run.launch_id, spec.name, provider.name, provider.region, profile,
                                                time.time()))
            key_path, host_key, key_name, group_id = _make_access(run, checked.rules)
            zone, volume = _data_volume(run, checked.volume_spec, checked.found_volume)
            instance, itype = _start(run, checked, profile, host_key, key_name, group_id, zone, volume)
            _reach(run, instance, key_path, host_key, password_hash, ssh_timeout)
            if wait_jupyter:
                progress(f"installing Jupyter (the bootstrap log: `nbcloud logs {spec.name} --bootstrap`)")
                wait_ready(ctx, spec.name, ready_timeout, progress)
                run.mark("jupyter")
            ctx.store.mark_launch(run.launch_id, outcome="done")
        except BaseException as exc:
            _launch_failed(ctx, provider, spec.name, run.launch_id, exc, made=run.made, reached_ssh=run.reached_ssh,
                           keep=keep_on_failure, progress=progress)
            raise
    return _result(instance, itype, reused=False, volume_id=volume.volume_id if volume else None,
                   seconds=run.timings)


def _make_access(run: _Launch, rules: list[IngressRule]) -> tuple[Path, keys.KeyPair, str, str]:
    """The login key pair (imported) and the security group: (key path, host key, key pair name, group id)."""
    spec, provider = run.spec, run.provider
    login, key_path = keys.load_or_create_login_key(run.ctx.paths.keys_dir, spec.name)
    host_key = keys.load_or_create_host_key(run.ctx.paths.keys_dir, spec.name)
    key_name = key_pair_name(spec.name, run.launch_id)
    run.progress("key pair")
    provider.import_key_pair(key_name, login.public_openssh, run.tags | {ROLE_TAG: "key-pair"})
    run.made_resource("key-pair", key_name)
    run.progress(f"security group (ssh from {rules[0].cidr} only)")
    group_id = provider.create_security_group(key_name, rules, run.tags | {ROLE_TAG: "security-group"})
    run.made_resource("security-group", group_id)
    return key_path, host_key, key_name, group_id


def _data_volume(run: _Launch, volume_spec: tuple[str, int] | None,
                 found: Volume | None) -> tuple[str | None, Volume | None]:
    """The zone to launch in and the data volume (reused, moved to ``spec.zone``, or made and its undo registered)."""
    spec, provider, progress = run.spec, run.provider, run.progress
    zone = spec.zone
    if not volume_spec:
        return zone, None
    volume_name, size = volume_spec
    if found is not None:
        if zone and zone != found.zone:
            found = move_volume(provider, found, zone, progress)
        progress(f"reusing data volume {volume_name} ({found.volume_id}, {found.size_gb} GB, {found.zone})")
        return found.zone, found
    zone = zone or provider.default_zone(spec.instance_type)
    progress(f"data volume {volume_name} ({size} GB, encrypted)")
    volume = provider.create_volume(size, zone, run.tags | {ROLE_TAG: "data-volume", VOLUME_NAME_TAG: volume_name})
    run.made_resource("volume", volume.volume_id)
    return zone, volume


def _start(run: _Launch, checked: _Checked, profile: str | None, host_key: keys.KeyPair, key_name: str,
           group_id: str, zone: str | None, volume: Volume | None) -> tuple[Instance, InstanceTypeInfo]:
    """User data, RunInstances (the instance's undo is the launch record: :func:`_run_instance`), the data volume
    attached."""
    from ..remote.userdata import render_user_data

    spec, provider = run.spec, run.provider
    # the agent's cap from its first check: spot counts at spot's price (the secrets install then sets the
    # price recorded for the instance actually launched, on-demand after a --spot-fallback)
    hourly = launch_price(provider, spec.instance_type, provider.region, spot=spec.spot, zone=zone)
    user_data = render_user_data(bootstrap_spec(spec, provider, host_key, volume.volume_id if volume else None,
                                                hourly))
    request = LaunchRequest(
        name=spec.name, launch_id=run.launch_id, instance_type=spec.instance_type, image_id=checked.image.image_id,
        key_name=key_name, security_group_id=group_id, user_data=user_data, disk_gb=spec.disk_gb,
        zone=zone, spot=spec.spot, max_price=spec.max_price, tags=run.tags | {ROLE_TAG: "instance"},
        fallback_types=spec.fallback_types,
    )
    instance, itype = _run_instance(run.ctx, provider, spec, request, checked.itype, profile, run.progress)
    run.mark("running")
    if volume is not None:
        run.progress(f"attaching {volume.volume_id}")
        provider.attach_volume(volume.volume_id, instance.instance_id, DATA_DEVICE)
    return instance, itype


def _reach(run: _Launch, instance: Instance, key_path: Path, host_key: keys.KeyPair, password_hash: str | None,
           ssh_timeout: float) -> None:
    """The ssh entry and pin, (public mode) the TLS certificate, the first ssh session (it installs the secrets),
    then the host key the instance made replaces the one from user-data."""
    ctx, spec, progress = run.ctx, run.spec, run.progress
    alias = f"nb-{spec.name}"
    write_access(ctx, instance, key_path, host_key)
    ctx.store.update(spec.name, state=instance.state, host=instance.host, user=instance.user)
    tls = None
    if spec.public:
        progress("TLS certificate (fingerprint pinned locally)")
        tls = prepare_tls(ctx, spec.name, instance.host or "", password_hash)
    progress(f"waiting for ssh {alias} ({instance.host})")
    # the first session that gets in installs the secrets: no separate handshake just to probe
    script, stdin = secrets_script(ctx, spec.name, spec, password_hash=password_hash, tls=tls)
    session.wait_ssh(ctx.paths.ssh_config, alias, timeout=ssh_timeout, command=script, input=stdin)
    run.reached_ssh = True
    progress("replacing the host key from user-data with one the instance made (pinned over ssh)")
    rotate_host_key(ctx, spec.name)
    run.mark("ssh")


def _run_instance(ctx: Context, provider: Provider, spec: InstanceSpec, request: LaunchRequest,
                  itype: InstanceTypeInfo, profile: str | None,
                  progress: Progress) -> tuple[Instance, InstanceTypeInfo]:
    """RunInstances (the launch marked as sent first: from then on an instance may exist), the record, running.

    Returns the instance and its type (a fallback type has its own GPUs)."""
    progress("launching instance")
    ctx.store.mark_launch(request.launch_id, run_at=time.time())
    try:
        try:
            instance = provider.run_instance(request, progress)
        except CapacityError:
            if not (spec.spot and spec.spot_fallback):
                raise
            progress("no spot capacity: falling back to on-demand (--spot-fallback)")
            instance = provider.run_instance(replace(request, spot=False, max_price=None,
                                                     launch_id=f"{request.launch_id}-od"), progress)
    except (CapacityError, QuotaError):
        # EC2 answered every attempt with a refusal: no instance exists, the rollback need not wait for one to show
        ctx.store.mark_launch(request.launch_id, run_at=None)
        raise
    ctx.store.mark_launch(request.launch_id, instance_id=instance.instance_id)
    if (instance.instance_type, instance.zone) != (spec.instance_type, request.zone or instance.zone):
        progress(f"launched {instance.instance_type} in {instance.zone} (asked: {spec.instance_type}"
                 f"{' in ' + request.zone if request.zone else ''})")
        if instance.instance_type != itype.name:
            itype = provider.instance_type(instance.instance_type)
    ctx.store.put(Record(name=spec.name, provider=provider.name, region=provider.region, profile=profile,
                         instance_id=instance.instance_id, launch_id=request.launch_id, state=instance.state,
                         instance_type=instance.instance_type, lifecycle=instance.lifecycle,
                         spec=spec_json(spec) | {"gpus": itype.gpus}))
    progress(f"waiting for {instance.instance_id} to run")
    instance = provider.wait_running(instance.instance_id, timeout=600)
    ctx.store.record_state(spec.name, instance.instance_id, "running", hourly=start_price(provider, instance))
    ctx.store.update(spec.name, spec=spec_json(spec) | {"gpus": itype.gpus, "placement_zone": instance.zone})
    return instance, itype


def _launch_failed(ctx: Context, provider: Provider, name: str, launch_id: str, exc: BaseException, *,
                   made: list[TaggedResource], reached_ssh: bool, keep: bool, progress: Progress) -> None:
    """Undo the launch (or keep it, ``--keep-on-failure``) and make ``exc`` say what was done; an interrupt is
    re-raised as :class:`Interrupted` naming what was rolled back."""
    with _shielded():
        intent = ctx.store.launch(launch_id)
        if intent is None:  # stopped before the launch was written down: nothing was made
            return
        failed = isinstance(exc, NbcloudError)
        log = save_bootstrap_log(ctx, name, launch_id) if failed and reached_ssh else None
        if failed and keep and ctx.store.get(name) is not None:
            ctx.store.mark_launch(launch_id, outcome="kept")
            _explain(exc, log, f"the instance was kept (--keep-on-failure): `nbcloud logs {name} --bootstrap` "
                               f"shows its setup log, `nbcloud down {name}` removes it")
            return
        try:
            recovery = sweep_launch(ctx, provider, intent, known=made,
                                    progress=lambda message: progress(f"rolling back: {message}"))
        except NbcloudError as err:  # the cloud did not answer: the launch stays pending for the next command
            recovery = Recovery(name, launch_id, [], [f"what it made ({err.message})"])
    what = describe_recovery(recovery)
    left = "" if recovery.complete else f"`nbcloud down {name}` removes what is left"
    if isinstance(exc, KeyboardInterrupt):
        raise Interrupted(f"interrupted — rolled back {what}", left) from exc
    if failed:
        kept = "" if log is None else f"the setup log is saved in {log.path}"
        again = f"`nbcloud up {name} --keep-on-failure` keeps the instance for debugging" if reached_ssh else ""
        _explain(exc, log, "; ".join(part for part in (kept, left, again) if part))


def _explain(exc: BaseException, log: BootLog | None, hint: str) -> None:
    """Put the bootstrap's cause in the error's message and ``hint`` in place of a hint that no longer holds."""
    if not isinstance(exc, NbcloudError):
        return
    if log is not None and log.cause:
        exc.message = f"{exc.message.split(':', 1)[0]}: {log.cause}"
    if hint:
        exc.hint = hint


@contextlib.contextmanager
def _interrupts_raise() -> Iterator[None]:
    """A `kill` (SIGTERM) or a closed terminal (SIGHUP) rolls a launch back as Ctrl-C does."""
    if not main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """No second Ctrl-C (or kill) stops a rollback half-way; SIGKILL still can: then the next command finishes it."""
    if not main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _result(instance: Instance, itype: InstanceTypeInfo | None, *, reused: bool, volume_id: str | None = None,
            seconds: dict[str, float] | None = None, changed: list[str] | None = None) -> UpResult:
    return UpResult(name=instance.name, instance_id=instance.instance_id, state=instance.state, host=instance.host,
                    user=instance.user, ssh_alias=instance.ssh_alias, provider=instance.provider,
                    region=instance.region, instance_type=instance.instance_type, gpus=itype.gpus if itype else 0,
                    reused=reused, data_volume_id=volume_id, seconds=seconds or {}, changed=changed or [])


def _reuse(ctx: Context, record: Record, spec: InstanceSpec, progress: Progress, wait_jupyter: bool,
           ssh_timeout: float, ready_timeout: float, given: frozenset[str] = frozenset(),
           confirm: Callable[[str], bool] = lambda _q: False) -> UpResult:
    provider = ctx.provider_for(record)
    instance = provider.find(record.name)
    if instance is not None and instance.state == "shutting-down" and record.lifecycle == "spot":
        progress(f"waiting for the reclaimed spot instance {instance.instance_id} to terminate")
        provider.wait_gone(instance.instance_id, "terminated", 600)
        instance = None
    if instance is None and record.lifecycle == "spot":
        # a new launch: what the user gave applies to it (the type too); what is fixed at launch is still refused
        relaunch = plan_in_place(stored_spec(record), spec, given, state="stopped")
        result = _relaunch_spot(ctx, provider, record, progress, wait_jupyter, ssh_timeout, ready_timeout,
                                relaunch.spec)
        return replace(result, changed=relaunch.flags())
    if instance is None or instance.state in {"shutting-down", "terminated"}:
        raise ConflictError(
            f"instance {record.name!r} ({record.instance_id}) was terminated outside nbcloud",
            f"run `nbcloud down {record.name}` to clean up what is left, then `nbcloud up {record.name}` again")
    # every option the user gave is applied or refused here, before anything changes: never "reusing" and dropping it
    plan = plan_in_place(stored_spec(record), spec, given, state=instance.state,
                         powerable=manages_machines(provider))
    require_price_for_cap(provider, plan.spec.instance_type, plan.spec.max_cost_usd if plan.agent else None)
    refuse_cap_below_cost(ctx, record, plan)
    progress(f"{record.name} exists ({instance.state}): reusing it"
             + (f", changing {', '.join(plan.flags())}" if plan.changed else ""))
    if plan.new_type is not None:
        if instance.state == "stopping":
            provider.wait_gone(instance.instance_id, "stopped", 600)
        retype(ctx, record, provider, instance.instance_id, plan.new_type, confirm, progress)
        record = ctx.record(record.name)
    if instance.state != "running" or plan.new_type is not None:
        instance = start_instance(ctx, record.name, progress=progress, wait_jupyter=False)
    session.wait_ssh(ctx.paths.ssh_config, instance.ssh_alias, timeout=ssh_timeout)
    if plan.agent or plan.bootstrap:
        apply_in_place(ctx, ctx.record(record.name), provider, plan, progress, timeout=ready_timeout)
    if wait_jupyter:
        wait_ready(ctx, record.name, ready_timeout, progress)
    return _result(instance, None, reused=True, changed=plan.flags())


def _relaunch_spot(ctx: Context, provider: Provider, record: Record, progress: Progress, wait_jupyter: bool,
                   ssh_timeout: float, ready_timeout: float, spec: InstanceSpec | None = None) -> UpResult:
    """A reclaimed spot instance: clear what is left of it (data volumes stay) and launch its spec again.

    Same zone: next to the data volume when there is one, else where the reclaimed instance ran.
    """
    spec = spec or stored_spec(record)
    zone = (record.spec or {}).get("placement_zone")
    if not spec.zone and not spec.data_volume and isinstance(zone, str):
        spec = replace(spec, zone=zone)
    progress(f"spot instance {record.instance_id} of {record.name} was reclaimed: launching a new one "
             f"(data volumes are kept)")
    password_hash = stored_password_hash(record)  # public mode: the new root disk needs it; read before down forgets
    down_unlocked(ctx, record.name, progress=progress)
    return _launch(ctx, provider, spec, record.profile, progress, wait_jupyter, ssh_timeout, ready_timeout,
                   password_hash)
