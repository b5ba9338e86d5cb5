"""`up NAME --host [user@]HOST[:PORT]`: Jupyter on a machine the user already has, reached as nb-NAME.

Nothing is launched and no key is made: the user's own key logs in, the machine's own host key is pinned (from
their known_hosts or a fingerprint they give), the bootstrap runs once over ssh with sudo, and the record goes to
the local store (there are no cloud tags). From there connect, status, logs, ssh nb-NAME and gateway mode work as
for a cloud instance; stop/start/autostop are refused (nbcloud does not power a machine it did not make) and
`down` removes what nbcloud installed, after asking.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

from ..errors import ConflictError, RemoteError, UsageError
from ..models import InstanceSpec
from ..providers.base import Provider, manages_machines
from ..ssh import config as ssh_config
from ..ssh import session
from ..ssh.target import SshTarget
from ..state import Record
from .context import Context, Progress, no_progress
from .instances import GATEWAY_PORT, JUPYTER_PORT, token_path, wait_ready
from .launch import UpResult
from .rollback import Rollback

__all__ = ["adopt", "forget", "removal_question"]


def adopt(ctx: Context, spec: InstanceSpec, *, host: str, identity_file: Path | None = None,
          host_key_fingerprint: str | None = None, provider_name: str | None = None,
          progress: Progress = no_progress, wait_jupyter: bool = True, ready_timeout: float = 900,
          given: frozenset[str] = frozenset()) -> UpResult:
    """``given``: the options the user set, applied in place when the machine is already adopted."""
    from ..providers.registry import HOST_PROVIDER, adopts_hosts
    from ..ssh.target import pinned_host_key, resolve_target

    name = provider_name or HOST_PROVIDER
    if not adopts_hosts(name):
        raise UsageError(f"--host is for a machine you already have, not for --provider {name}",
                         "use --provider ssh with --host, or drop --host")
    target = resolve_target(host, identity_file, ctx.paths.user_ssh_config)
    with ctx.name_lock(spec.name):
        existing = ctx.store.get(spec.name)
        if existing is not None:
            if existing.provider != name or existing.instance_id != target.address:
                raise ConflictError(f"{spec.name!r} already exists ({existing.provider}, {existing.host})",
                                    f"`nbcloud up {spec.name}` reuses it; `nbcloud down {spec.name}` first to use "
                                    "the name for another machine")
        else:
            for other in ctx.store.all():
                if other.provider == name and other.instance_id == target.address:
                    raise ConflictError(f"{target.address} is already adopted as {other.name!r}",
                                        f"use `nbcloud up {other.name}`, or `nbcloud down {other.name}` first")
    if existing is not None:
        from .launch import up

        return up(ctx, spec, progress=progress, wait_jupyter=wait_jupyter, ready_timeout=ready_timeout, given=given)
    key = pinned_host_key(target, host_key_fingerprint)
    provider = ctx.provider(name)
    with ctx.name_lock(spec.name):
        if ctx.store.get(spec.name) is not None:  # another `up` took the name while we scanned keys
            raise ConflictError(f"{spec.name!r} was just made by another nbcloud command", f"`nbcloud up {spec.name}`")
        return _adopt(ctx, provider, spec, target, key.public, progress, wait_jupyter, ready_timeout)


def _adopt(ctx: Context, provider: Provider, spec: InstanceSpec, target: SshTarget, host_key: str, progress: Progress,
           wait_jupyter: bool, ready_timeout: float) -> UpResult:
    from ..remote.adopted import PREFLIGHT_CODES, install_script, preflight_script, uninstall_script

    # The user's machine must never power itself off: no idle stop, no cost cap (no price is known anyway).
    spec = replace(spec, idle_stop_seconds=None, max_cost_usd=None)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    alias = f"nb-{spec.name}"
    rollback = Rollback(progress)
    try:
        # ops that need the login key look for keys_dir/NAME: a link to the user's key, so `down` (which removes
        # nbcloud's keys) unlinks the link and never touches the key itself.
        link = ctx.paths.keys_dir / spec.name
        link.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        link.unlink(missing_ok=True)
        link.symlink_to(target.identity_file)
        rollback.add("key link", lambda: link.unlink(missing_ok=True))

        progress(f"pinning {target.known_hosts_name}'s host key ({host_key.split()[0]}) as {alias}")
        ssh_config.pin_host_key(ctx.paths, alias, host_key)
        ssh_config.write_entry(ctx.paths, ssh_config.SshEntry(
            alias=alias, host=target.hostname, user=target.user, identity_file=target.identity_file,
            known_hosts=ctx.paths.known_hosts, port=target.port))

        def remove_access() -> None:
            ssh_config.remove_entry(ctx.paths, alias)
            ssh_config.unpin_host_key(ctx.paths, alias)

        rollback.add("ssh config entry", remove_access)
        ssh_config.ensure_include(ctx.paths)

        progress(f"ssh {alias} ({target.address})")
        session.wait_ssh(ctx.paths.ssh_config, alias, timeout=30)
        timings["ssh"] = time.monotonic() - t0
        check = session.run(ctx.paths.ssh_config, alias, preflight_script(spec.name, target.user), timeout=60,
                            check=False)
        if check.returncode in PREFLIGHT_CODES:
            what, fix = PREFLIGHT_CODES[check.returncode]
            values = {"user": target.user, "host": target.hostname, "name": spec.name}
            raise (ConflictError if check.returncode == 14 else UsageError)(what.format(**values), fix.format(**values))
        if check.returncode != 0:
            raise RemoteError(f"checking {target.address} failed ({check.returncode}): "
                              f"{(check.stderr.strip().splitlines() or ['no output'])[-1]}")

        ctx.store.put(Record(name=spec.name, provider=provider.name, region=provider.region,
                             instance_id=target.address, launch_id=uuid.uuid4().hex[:12], state="running",
                             host=target.hostname, user=target.user, instance_type="ssh-host",
                             spec=asdict(spec) | {"gpus": 0, "ssh_port": target.port,
                                                  "identity_file": str(target.identity_file), "host_key": host_key}))
        ctx.store.record_state(spec.name, target.address, "running")
        rollback.add("local record", lambda: ctx.store.delete(spec.name))

        # the host is ours to clean from here on (the preflight saw no other nbcloud on it)
        def uninstall() -> None:
            session.run(ctx.paths.ssh_config, alias, uninstall_script(spec.name, target.user), timeout=120)

        rollback.add(f"nbcloud files on {target.hostname}", uninstall)
        # The token goes first: Jupyter's unit waits for it, so the service starts the moment the bootstrap
        # enables it (after the bootstrap, the sandbox's systemctl waited ~5 s for it at every adoption).
        _install_secrets(ctx, spec, target.user)
        progress(f"installing Jupyter (sudo; the log: `nbcloud logs {spec.name} --bootstrap`)")
        done = session.run(ctx.paths.ssh_config, alias, install_script(spec.name),
                           input=_bootstrap(spec, provider, target.user).encode(), timeout=ready_timeout, check=False)
        if done.returncode != 0:
            tail = " | ".join(ln.strip() for ln in (done.stdout + done.stderr).strip().splitlines()[-3:])
            raise RemoteError(f"the bootstrap failed on {target.address}: {tail or 'no output'}",
                              f"fix the cause and run `nbcloud up {spec.name} --provider ssh --host ...` again")
        timings["bootstrap"] = time.monotonic() - t0
        if wait_jupyter:
            progress("waiting for Jupyter")
            wait_ready(ctx, spec.name, ready_timeout, progress)
            timings["jupyter"] = time.monotonic() - t0
    except BaseException as exc:
        rollback.undo_after(exc, f"remove them by hand on {target.address}")
        raise
    return UpResult(name=spec.name, instance_id=target.address, state="running", host=target.hostname,
                    user=target.user, ssh_alias=alias, provider=provider.name, region=provider.region,
                    instance_type="ssh-host", gpus=0, reused=False, seconds=timings)


def _bootstrap(spec: InstanceSpec, provider: Provider, user: str) -> str:
    """The same bootstrap a cloud instance runs from user-data, for ``user``, without host keys (the machine
    keeps its own) and without idle stop."""
    from ..remote.bootstrap import render_bootstrap
    from ..remote.spec import BootstrapSpec
    from .agent import agent_check_period

    return render_bootstrap(BootstrapSpec(
        name=spec.name, login_user=user, jupyter_port=JUPYTER_PORT, gateway=spec.gateway,
        gateway_port=GATEWAY_PORT, durable_outputs=spec.durable_outputs, cull_idle_minutes=spec.cull_idle_minutes,
        idle_stop_seconds=None, max_cost_usd=None, python_packages=spec.python_packages,
        requirements=spec.requirements, package_env=dict(provider.package_env), check_period=agent_check_period()))


def _install_secrets(ctx: Context, spec: InstanceSpec, user: str) -> None:
    """The Jupyter token (and gateway token) over the session's stdin, as for a cloud instance."""
    from ..config import write_private
    from ..remote import secrets

    path = token_path(ctx, spec.name)
    if not path.exists():
        write_private(path, secrets.new_token())
    gateway_token = None
    if spec.gateway:
        from .instances import ensure_gateway_token

        gateway_token = ensure_gateway_token(ctx, spec.name)
    script, stdin = secrets.install_secrets_script(path.read_text().strip(), gateway_token=gateway_token,
                                                   idle_stop_seconds=None, login_user=user)
    session.run(ctx.paths.ssh_config, f"nb-{spec.name}", script, input=stdin, timeout=60)


def removal_question(ctx: Context, name: str) -> str | None:
    """What `down NAME` must confirm first, or None: on a machine the user already has, down removes software
    from *their* machine (their key, home and ~/data stay)."""
    record = ctx.store.get(name)
    if record is None or manages_machines(ctx.provider_for(record)):
        return None  # no record: `down` itself says so, or removes what an interrupted `up NAME` made
    return (f"Remove nbcloud's Jupyter service and files from {record.user}@{record.host} "
            f"(your home, notebooks and key stay)?")


def forget(ctx: Context, name: str) -> dict[str, str]:
    """`down NAME --forget`: drop an adopted machine from this machine's records without reaching it (it is gone
    or unreachable). Refused for cloud instances: forgetting them would leave resources billing unseen."""
    from .instances import forget_locally, stop_tunnel

    with ctx.name_lock(name):
        record = ctx.record(name)
        if manages_machines(ctx.provider_for(record)):
            raise UsageError(f"--forget is for a machine you already had; {name} is a {record.provider} instance",
                             f"`nbcloud down {name}` terminates it and deletes what nbcloud made")
        stop_tunnel(ctx, name)
        forget_locally(ctx, name)
    return {"name": name, "forgotten": record.instance_id or name,
            "note": f"nbcloud's files may remain on {record.host} (/opt/nbcloud, nbcloud-*.service)"}
