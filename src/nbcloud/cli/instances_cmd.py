"""up, status, list, start, stop, down, ssh, logs, doctor: each one call into nbcloud.ops, rendered here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..providers.registry import adopts_hosts, provider_names
from ..ssh.config import vscode_command
from .complete import instance_names
from .output import emit, err, json_option, progress, table
from .status_text import render_status, vscode_line

provider_option = click.option("--provider", type=click.Choice(provider_names()), default=None,
                               help="Where to run: aws (default), sandbox (emulated cloud on this machine), "
                                    "or ssh (a machine you already have: up --host).")
region_option = click.option("--region", default=None,
                             help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, your profile's).")
profile_option = click.option("--profile", default=None, help="AWS profile (incl. SSO profiles).")


def _ctx():
    from ..ops import Context

    return Context.create()


def _tags(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid --tag {value!r}", "write it as key=value")
        if key.startswith(("nbcloud:", "aws:")):
            raise UsageError(f"tag key {key!r} is reserved", "use a key that does not start with nbcloud: or aws:")
        if len(key) > 128 or len(val) > 256:  # EC2's limits: refused here, not by RunInstances after the key pair
            raise UsageError(f"--tag {key[:20]!r}…: keys are at most 128 characters and values 256 (EC2's limits)",
                             "shorten it")
        out.append((key, val))
    if len(out) > 40:  # EC2 allows 50 tags a resource, and nbcloud sets some of its own
        raise UsageError(f"{len(out)} --tag options: at most 40",
                         "EC2 allows 50 tags a resource, and nbcloud sets some of its own")
    return tuple(out)


class Usd(click.ParamType):
    """A money option: finite, above zero, bounded (`nan`, `inf`, `1e400`, `-1`, `0` refused with exit 2)."""

    name = "USD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        from ..models import parse_usd

        if isinstance(value, float):
            return value
        return parse_usd(value, "--" + (param.name or "amount").replace("_", "-") if param else "amount")


#: `up`'s parameters → the InstanceSpec field each sets (what "the user gave" means on an existing instance)
SPEC_FIELDS = {"instance_type": "instance_type", "image": "image", "disk_gb": "disk_gb", "data_volume": "data_volume",
               "tags": "tags", "zone": "zone", "allow_cidr": "allow_cidr", "spot": "spot", "max_price": "max_price",
               "spot_fallback": "spot_fallback", "public": "public", "durable_outputs": "durable_outputs",
               "mode": "gateway", "idle_stop": "idle_stop_seconds", "max_cost": "max_cost_usd",
               "cull_idle": "cull_idle_minutes", "python_packages": "python_packages",
               "requirements": "requirements"}


def _given() -> frozenset[str]:
    """The spec fields set on the command line (or by env), not left at click's defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return frozenset(field for param, field in SPEC_FIELDS.items()
                     if ctx.get_parameter_source(param) not in (None, ParameterSource.DEFAULT))


def _confirmer(yes: bool) -> Any:
    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UsageError(f"{question.split(' (')[0]}: needs your confirmation and there is no terminal",
                             "confirm with --yes")
        return bool(click.confirm(question, default=False, err=True))

    return confirm


def _check_up_options(ctx: Any, name: str, provider: str | None, host: str | None, *, requirements: Path | None,
                      password_file: Path | None, public: bool, spot: bool, max_price: float | None,
                      identity_file: Path | None, host_key_fingerprint: str | None) -> None:
    """`up`'s options that do not go together, refused before anything happens (before --dry-run too)."""
    if requirements is not None and not requirements.is_file():
        raise UsageError(f"requirements file {requirements} not found", "pass an existing file to --requirements")
    if password_file is not None and not password_file.is_file():
        raise UsageError(f"password file {password_file} not found", "pass an existing file to --password-file")
    if password_file is not None and not public:
        raise UsageError("--password-file is public mode's password", "add --public or drop --password-file")
    if password_file is not None and ctx.store.get(name) is not None:
        raise UsageError(f"{name} exists and keeps the password it was launched with: --password-file would be "
                         "ignored", f"drop --password-file, or `nbcloud down {name}` and `nbcloud up {name} "
                         "--public --password-file FILE` anew")
    if max_price is not None and not spot:
        raise UsageError("--max-price applies to spot instances only", "add --spot or drop --max-price")
    if host is None and (identity_file is not None or host_key_fingerprint is not None):
        raise UsageError("--identity-file and --host-key-fingerprint go with --host",
                         "nbcloud up NAME --provider ssh --host [user@]HOST[:PORT] --identity-file KEY")
    # refused here, before --dry-run, exactly as the real run refuses it
    if host is None and provider is not None and adopts_hosts(provider) and ctx.store.get(name) is None:
        raise UsageError(f"--provider {provider} adopts a machine you already have and needs its address",
                         "nbcloud up NAME --provider ssh --host [user@]HOST[:PORT] [--identity-file KEY]")


@click.command()
@click.argument("name", shell_complete=instance_names)
@provider_option
@region_option
@profile_option
@click.option("--instance-type", "-t", default=None, help="EC2 instance type (validated; GPU shown).")
@click.option("--image", default=None,
              help="ubuntu (Ubuntu 24.04), dlami (Deep Learning GPU), an AMI id, or a baked image.")
@click.option("--disk", "disk_gb", type=click.IntRange(8, 16384), default=30, show_default=True, help="Root disk, GB.")
@click.option("--data-volume", default=None, help="Encrypted EBS volume at ~/data, kept on down: SIZE or NAME[:SIZE].")
@click.option("--tag", "tags", multiple=True, help="Extra tag key=value (repeatable).")
@click.option("--zone", default=None, help="Availability zone (default: each zone offering the type, in turn).")
@click.option("--fallback-types", default=None, metavar="T1,T2",
              help="Instance types to launch instead when the asked one has no capacity or quota.")
@click.option("--allow-cidr", default=None, help="Admit this address range instead of your detected IP /32.")
@click.option("--spot", is_flag=True, help="Use a spot instance (cheaper, can be interrupted).")
@click.option("--max-price", type=Usd(), default=None, help="Spot: highest $/h to pay.")
@click.option("--spot-fallback", is_flag=True, help="Spot: fall back to on-demand when there is no capacity.")
@click.option("--public", is_flag=True, help="Serve Jupyter over TLS with a password to your IP (no SSH needed).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Public mode: read the password from this file instead of prompting.")
@click.option("--durable-outputs/--no-durable-outputs", default=None,
              help="Run cells on the server so outputs survive a reload or a disconnect (default: on, except with "
                   "--mode gateway); --no-durable-outputs: classic execution, no collaboration packages.")
@click.option("--mode", type=click.Choice(["lab", "gateway"]), default="lab", show_default=True,
              help="gateway: also run a Kernel Gateway for `nbcloud lab`.")
@click.option("--idle-stop", default=None, help="Stop after this long idle (e.g. 30m, 2h, off). Default 60m.")
@click.option("--max-cost", type=Usd(), default=None, help="Stop before this many USD accrue.")
@click.option("--cull-idle", type=click.IntRange(min=1), default=None, help="Shut down kernels idle this many minutes.")
@click.option("--python-packages", default=None, help="Extra packages for the environment, comma-separated.")
@click.option("--requirements", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A requirements.txt to install too.")
@click.option("--keep-on-failure", is_flag=True,
              help="If the setup fails, keep the instance (and its record) for debugging instead of removing it.")
@click.option("--no-connect", is_flag=True, help="Do not open the tunnel and browser at the end.")
@click.option("--no-browser", is_flag=True, help="Open the tunnel but print the URL instead of opening a browser.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Local port for the tunnel.")
@click.option("--dry-run", is_flag=True, help="Print the bootstrap that would run and create nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask (changing the instance type of a stopped instance).")
@click.option("--host", default=None, metavar="[USER@]HOST[:PORT]",
              help="--provider ssh: a machine you already reach by ssh (your ~/.ssh/config is honoured).")
@click.option("--identity-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="--provider ssh: your private key for --host (default: what ssh would use). Never deleted.")
@click.option("--host-key-fingerprint", default=None, metavar="SHA256:...",
              help="--provider ssh: pin this host key when --host is not in your known_hosts.")
@json_option
def up(name: str, provider: str | None, region: str | None, profile: str | None, instance_type: str | None,
       image: str | None, disk_gb: int, data_volume: str | None, tags: tuple[str, ...], zone: str | None,
       fallback_types: str | None, allow_cidr: str | None, spot: bool, max_price: float | None,
       spot_fallback: bool, public: bool,
       password_file: Path | None, durable_outputs: bool | None, mode: str, idle_stop: str | None,
       max_cost: float | None,
       cull_idle: int | None, python_packages: str | None, requirements: Path | None, keep_on_failure: bool,
       no_connect: bool,
       no_browser: bool, port: int | None, dry_run: bool, yes: bool, host: str | None,
       identity_file: Path | None, host_key_fingerprint: str | None, as_json: bool) -> None:
    """Launch NAME (or reuse it), install Jupyter, and open it in the browser."""
    from .. import ops
    from ..models import InstanceSpec, default_durable_outputs, parse_duration, validate_name

    validate_name(name)
    ctx = _ctx()
    settings = ctx.settings
    _check_up_options(ctx, name, provider, host, requirements=requirements, password_file=password_file,
                      public=public, spot=spot, max_price=max_price, identity_file=identity_file,
                      host_key_fingerprint=host_key_fingerprint)
    if host is not None:
        _check_host_options({"--instance-type": instance_type, "--image": image, "--data-volume": data_volume,
                             "--zone": zone, "--fallback-types": fallback_types, "--allow-cidr": allow_cidr,
                             "--spot": spot, "--max-price": max_price,
                             "--spot-fallback": spot_fallback, "--public": public, "--password-file": password_file,
                             "--max-cost": max_cost, "--dry-run": dry_run,
                             "--idle-stop": idle_stop if idle_stop and parse_duration(idle_stop) else None,
                             "--disk": disk_gb if disk_gb != 30 else None})
    spec = InstanceSpec(
        name=name, instance_type=instance_type or settings.instance_type, image=image or settings.image,
        disk_gb=disk_gb, data_volume=data_volume, tags=_tags(tags), spot=spot, max_price=max_price,
        spot_fallback=spot_fallback, zone=zone, allow_cidr=allow_cidr,
        fallback_types=tuple(t.strip() for t in (fallback_types or "").split(",") if t.strip()), public=public,
        durable_outputs=default_durable_outputs(mode == "gateway") if durable_outputs is None else durable_outputs,
        gateway=mode == "gateway",
        idle_stop_seconds=parse_duration(idle_stop or settings.idle_stop), max_cost_usd=max_cost,
        cull_idle_minutes=cull_idle,
        python_packages=tuple(p.strip() for p in (python_packages or "").split(",") if p.strip()),
        requirements=requirements.read_text() if requirements else None,
    )
    # the password is checked before --dry-run too (a dry run refuses what the real run refuses; it never prompts)
    password = _public_password(ctx, name, password_file) if public and not (dry_run and sys.stdin.isatty()) \
        else None
    if dry_run:
        emit(ops.dry_run(ctx, spec), as_json, lambda r: r.bootstrap)
        return
    with progress(f"nbcloud up {name}", as_json) as step:
        if host is not None:  # a machine the user already has: nothing to launch (nbcloud.ops.adopt)
            from ..ops.adopt import adopt

            result = adopt(ctx, spec, host=host, identity_file=identity_file,
                           host_key_fingerprint=host_key_fingerprint, provider_name=provider, progress=step,
                           given=_given())
        else:
            result = ops.up(ctx, spec, provider_name=provider, region=region, profile=profile, progress=step,
                            password=password, given=_given(), confirm=_confirmer(yes), keep_on_failure=keep_on_failure)
    connected = None
    if not no_connect:
        with progress(f"connecting to {name}", as_json) as step:
            connected = ops.connect(ctx, name, port=port, open_browser=not no_browser and not as_json, progress=step)
        if connected.tunnel_note and not as_json:
            err(f"note: {connected.tunnel_note}")
    payload: dict[str, Any] = dict(vars(result))
    payload["vscode"] = vscode_command(result.ssh_alias, result.user)
    if connected is not None:
        payload.update(url=connected.url, local_port=connected.local_port, tunnel=connected.tunnel,
                       tunnel_mode=connected.tunnel_mode)
    emit(payload, as_json, _up_text)


def _up_text(p: dict[str, Any]) -> str:
    """What `up` prints: the instance, then how to reach it (ssh, Jupyter, VS Code)."""
    lines = [f"{p['name']}: {p['instance_type']} {p['state']} at {p['host']} ({p['provider']}, {p['region']})"
             + (" — reused" if p["reused"] else "")
             + (f", changed {', '.join(p['changed'])}" if p.get("changed") else ""),
             f"  ssh:     ssh {p['ssh_alias']}"]
    if p.get("url"):
        lines.append(f"  jupyter: {p['url']}")
    else:
        lines.append(f"  jupyter: nbcloud connect {p['name']}")
    lines.append(f"  vscode:  {p['vscode']}")
    return "\n".join(lines)


def _check_host_options(given: dict[str, Any]) -> None:
    """Cloud options mean nothing for a machine the user already has: say so rather than ignore them."""
    used = [flag for flag, value in given.items() if value not in (None, False)]
    if used:
        raise UsageError(f"{', '.join(used)} cannot apply to a machine you already have (--host)",
                         f"drop {'it' if len(used) == 1 else 'them'}; the machine, its disk and its power are yours")


def _public_password(ctx: Any, name: str, password_file: Path | None) -> str | None:
    """Public mode's password: from --password-file, else typed without echo (twice) on a terminal."""
    if ctx.store.get(name) is not None:
        return None  # reusing: the instance already has its password
    if password_file is not None:
        return password_file.read_text().rstrip("\r\n")
    if sys.stdin.isatty():
        return str(click.prompt("Jupyter password", hide_input=True, confirmation_prompt=True, err=True))
    raise UsageError("--public needs a password and there is no terminal to type it on",
                     "pass --password-file FILE (one line, at least 8 characters)")


@click.command()
@click.argument("name", required=False, shell_complete=instance_names)
@json_option
def status(name: str | None, as_json: bool) -> None:
    """Show instances (state, type, address, uptime, cost, tunnel)."""
    from .. import ops
    from ..ops.launches import describe_recovery, recover_interrupted

    ctx = _ctx()
    for recovery in recover_interrupted(ctx):  # an `up` that was killed: removed, and said so
        err(f"note: an interrupted `nbcloud up` was rolled back: {describe_recovery(recovery)}")
    views = ops.status(ctx, name)
    if name:
        emit(views[0] if views else {}, as_json, lambda v: render_status([v]) + vscode_line(v))
    else:
        emit(views, as_json, render_status)


@click.command("list")
@provider_option
@region_option
@profile_option
@json_option
def list_(provider: str | None, region: str | None, profile: str | None, as_json: bool) -> None:
    """List every instance nbcloud manages in a region, found by tags (also those made elsewhere)."""
    from ..ops.lifecycle import list_managed

    found = list_managed(_ctx(), provider, region, profile)
    emit(found, as_json, lambda items: table([
        {"name": i.name, "id": i.instance_id, "state": i.state, "type": i.instance_type, "address": i.host,
         "launch": i.launch_id} for i in items], ["name", "id", "state", "type", "address", "launch"])
        or "nothing managed by nbcloud here")


@click.command()
@click.argument("name", shell_complete=instance_names)
@json_option
def stop(name: str, as_json: bool) -> None:
    """Stop NAME; its disks keep billing (shown)."""
    from .. import ops

    with progress(f"stopping {name}", as_json) as step:
        result = ops.stop_instance(_ctx(), name, progress=step)
    emit(result, as_json, lambda r: f"{r.name} stopped.\n" + (
        "  still billing: " + "; ".join(r.still_billing) if r.still_billing else "  nothing else bills"))


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.option("--no-wait", is_flag=True, help="Do not wait for Jupyter to answer.")
@json_option
def start(name: str, no_wait: bool, as_json: bool) -> None:
    """Start a stopped NAME (new address, ssh entry updated)."""
    from .. import ops

    with progress(f"starting {name}", as_json) as step:
        instance = ops.start_instance(_ctx(), name, progress=step, wait_jupyter=not no_wait)
    emit({"name": instance.name, "instance_id": instance.instance_id, "state": instance.state, "host": instance.host,
          "user": instance.user}, as_json, lambda r: f"{r['name']} running at {r['host']} (ssh nb-{r['name']})")


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.option("--delete-data", is_flag=True, help="Also delete the data volume(s).")
@click.option("--snapshot-on-down", is_flag=True,
              help="Snapshot each data volume (and wait for it) once the instance is gone, before deleting anything.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.option("--forget", is_flag=True,
              help="--provider ssh: forget NAME here without reaching the machine (it is gone or unreachable).")
@json_option
def down(name: str, delete_data: bool, snapshot_on_down: bool, yes: bool, forget: bool, as_json: bool) -> None:
    """Terminate NAME and delete its security group and key pair (data volumes are kept).

    On a machine you already had (--provider ssh): remove nbcloud's Jupyter service and files from it, after asking.
    """
    from .. import ops
    from ..ops.adopt import forget as forget_machine
    from ..ops.adopt import removal_question

    ctx = _ctx()
    if forget:
        emit(forget_machine(ctx, name), as_json, lambda r: f"{r['name']} forgotten on this machine; {r['note']}")
        return
    question = removal_question(ctx, name)
    if question and not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"down {name} removes nbcloud's Jupyter from your own machine", "confirm with --yes")
        click.confirm(question, abort=True, err=True)
    if delete_data and not yes:
        if not sys.stdin.isatty():
            raise UsageError("--delete-data deletes the data volume for good", "confirm with --yes")
        click.confirm(f"Delete the data volume of {name} for good?", abort=True, err=True)
    with progress(f"tearing down {name}", as_json) as step:
        result = ops.down(ctx, name, delete_data=delete_data, snapshot=snapshot_on_down, progress=step)

    def text(r: Any) -> str:
        lines = [f"{r.name} is gone: deleted {len(r.deleted)} resources."]
        if r.kept:
            lines.append("  kept: " + "; ".join(r.kept))
        if r.deleted_data_volumes:
            lines.append("  deleted data volumes: " + "; ".join(r.deleted_data_volumes))
        if r.snapshots:
            lines.append("  snapshots: " + ", ".join(r.snapshots))
        if r.still_billing:
            lines.append("  still billing: " + "; ".join(r.still_billing))
        return "\n".join(lines)

    emit(result, as_json, text)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@json_option
@click.argument("name", shell_complete=instance_names)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, command: tuple[str, ...], as_json: bool) -> None:
    """Open a shell on NAME, or run COMMAND (`nbcloud ssh NAME -- nvidia-smi`).

    `nbcloud ssh --json NAME -- CMD` prints {exit_code, stdout, stderr} and exits with CMD's exit code.
    """
    from ..ops.shell import check_reachable
    from ..ssh.session import ssh_argv

    ctx = _ctx()
    if command[:1] == ("--json",):  # `nbcloud ssh NAME --json -- CMD`: after NAME click passes it on as CMD
        as_json, command = True, command[1:]
    if as_json:
        from ..ops.shell import run_command

        words = command[1:] if command[:1] == ("--",) else command
        result = run_command(ctx, name, " ".join(words))
        emit(result, as_json)
        sys.exit(result.exit_code)
    check_reachable(ctx, name)  # a stopped instance is said so, not left to ssh's "Invalid argument"
    argv = ssh_argv(ctx.paths.ssh_config, f"nb-{name}")
    argv.remove("BatchMode=yes")
    argv.remove("-o")
    if command:
        argv += list(command)  # after the alias: ssh hands the rest to the remote shell as the command
    os.execv(argv[0], argv)


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.option("--bootstrap", is_flag=True, help="The setup log instead of Jupyter's.")
@click.option("--agent", is_flag=True, help="The idle-stop agent's log.")
@click.option("--gateway", is_flag=True, help="The Kernel Gateway's log (gateway mode).")
@click.option("--follow", "-f", is_flag=True, help="Keep streaming.")
@click.option("--lines", "-n", type=click.IntRange(min=1), default=200, show_default=True)
@json_option
def logs(name: str, bootstrap: bool, agent: bool, gateway: bool, follow: bool, lines: int, as_json: bool) -> None:
    """Show the Jupyter server log of NAME (or --bootstrap, --agent, --gateway); --json: {"lines": [...]}."""
    from ..ops.shell import check_reachable, explain_unreachable, log_command, read_log
    from ..ssh.session import SSH_CONNECT_FAILED, ssh_argv

    chosen = [flag for flag, on in (("bootstrap", bootstrap), ("agent", agent), ("gateway", gateway)) if on]
    if len(chosen) > 1:
        raise UsageError(f"--{chosen[0]} and --{chosen[1]} name two logs", "pick one log per call")
    if follow and as_json:
        raise UsageError("--follow streams without end and --json prints one document", "drop one of them")
    log = chosen[0] if chosen else "jupyter"
    ctx = _ctx()
    if as_json:
        emit(read_log(ctx, name, log, lines), as_json)
        return
    check_reachable(ctx, name)
    argv = [*ssh_argv(ctx.paths.ssh_config, f"nb-{name}", "-o", "LogLevel=ERROR"), log_command(log, lines, follow)]
    # stdout streams through; stderr is held back (unless following) so that ssh's own failure becomes one line
    done = subprocess.run(argv, stderr=None if follow else subprocess.PIPE, text=True)
    if done.returncode == SSH_CONNECT_FAILED:  # ssh's own failure (tail's codes are 0/1): say why, not ssh's 255
        raise explain_unreachable(ctx, name, ((done.stderr or "").strip().splitlines() or ["no answer"])[-1])
    sys.stderr.write(done.stderr or "")
    sys.exit(done.returncode)


@click.command()
@click.option("--orphans", "find_orphans", is_flag=True,
              help="List resources tagged by nbcloud that no instance owns, and what still bills unused.")
@click.option("--fix", is_flag=True, help="With --orphans: delete the orphans; ask before each still-billing item.")
@provider_option
@region_option
@profile_option
@json_option
def doctor(find_orphans: bool, fix: bool, provider: str | None, region: str | None, profile: str | None,
           as_json: bool) -> None:
    """Check the setup; with --orphans find (and --fix) leftovers and what still bills."""
    from .. import ops

    ctx = _ctx()
    if not find_orphans:
        import shutil

        checks = {tool: bool(shutil.which(tool)) for tool in ("ssh", "rsync")}
        checks["ssh_config_include"] = ctx.paths.user_ssh_config.exists() and str(ctx.paths.ssh_config) in \
            ctx.paths.user_ssh_config.read_text()
        from ..ops.storage import billing_check

        emit({"checks": checks, **billing_check(ctx, provider, region, profile)}, as_json, _checks_text)
        return

    def confirm(question: str) -> bool:  # data is deleted only item by item, on a terminal
        return sys.stdin.isatty() and not as_json and click.confirm(question, default=False, err=True)

    report = ops.orphans(ctx, provider, region, profile, fix=fix, confirm=confirm)
    emit(report, as_json, _doctor_text)


def _checks_text(r: dict[str, Any]) -> str:
    from ..money.cost import format_usd

    lines = [f"{'ok ' if v else 'MISSING'} {k}" for k, v in r["checks"].items()]
    lines += [f"still billing, used by no instance ({i['provider']}/{i['region']}): {i['kind']} {i['name'] or '-'} "
              f"{i['id']} {format_usd(i['monthly_usd'])}/month — `{i['remove']}`" for i in r["still_billing"]]
    lines += [f"not checked: {u}" for u in r["unchecked"]]
    if not r["checked"] and not r["unchecked"]:
        lines.append("no cloud checked (nothing known here); `nbcloud doctor --orphans` checks the default one")
    return "\n".join(lines)


def _doctor_text(r: Any) -> str:
    from ..money.cost import format_usd

    lines = [f"orphan: {o.kind} {o.resource_id} (name {o.name}, launch {o.launch_id})" for o in r.orphans]
    if r.removed:
        lines.append(f"removed: {', '.join(r.removed)}")
    if not r.orphans:
        lines.append("no orphans")
    if r.still_billing:
        lines.append(f"still billing ({format_usd(r.still_billing_monthly_usd)}/month), used by no instance:")
        lines += [f"  {i['kind']} {i['name'] or '-'} {i['id']} {i['size_gb']} GB {format_usd(i['monthly_usd'])}/month"
                  f" — `{i['remove']}`" for i in r.still_billing]
    else:
        lines.append("nothing else bills unused")
    return "\n".join(lines)
