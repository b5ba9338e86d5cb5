"""`up` on an instance that exists: apply what the user asked for in place, or refuse it in one line.

Only options the user actually gave count (``given``: spec field names, not click defaults). What can change on a
live machine is applied over SSH, the way `nbcloud autostop` and `nbcloud gateway` do it: the agent's settings
file for the idle limit and the cost cap, a re-run of the instance's own (idempotent) bootstrap for Jupyter's
config and packages (durable outputs, gateway mode, culling, extra packages). The instance type changes only while
the instance is stopped (EC2's ModifyInstanceAttribute). Everything else is fixed at launch and refused, and so is
turning durable outputs or gateway mode off (the bootstrap adds packages, it never removes them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConflictError, RemoteError, UsageError
from ..models import InstanceSpec
from ..remote.bootstrap import RERUN_FROM_STDIN
from ..remote.machine_root import SH_ROOT
from ..state import Record
from .context import Context, Progress, no_progress

__all__ = ["FLAGS", "InPlacePlan", "apply_in_place", "plan_in_place", "refuse_cap_below_cost", "refuse_elsewhere",
           "retype"]

#: spec field → the option that sets it (for messages and for `changed` in `up --json`)
FLAGS: dict[str, str] = {
    "instance_type": "--instance-type", "image": "--image", "disk_gb": "--disk", "data_volume": "--data-volume",
    "tags": "--tag", "spot": "--spot", "max_price": "--max-price", "spot_fallback": "--spot-fallback",
    "zone": "--zone", "allow_cidr": "--allow-cidr", "public": "--public", "durable_outputs": "--durable-outputs",
    "gateway": "--mode", "idle_stop_seconds": "--idle-stop", "max_cost_usd": "--max-cost",
    "cull_idle_minutes": "--cull-idle", "python_packages": "--python-packages", "requirements": "--requirements",
}

#: written into the agent's settings file (re-read at each check)
AGENT_FIELDS = ("idle_stop_seconds", "max_cost_usd")
#: rendered by the bootstrap (Jupyter config, units, venv): applied by re-running it
BOOTSTRAP_FIELDS = ("durable_outputs", "gateway", "cull_idle_minutes", "python_packages", "requirements")


@dataclass(frozen=True)
class InPlacePlan:
    spec: InstanceSpec  # the stored spec with the changes applied
    changed: tuple[str, ...] = ()  # spec fields that change (instance_type included)
    new_type: str | None = None

    @property
    def agent(self) -> bool:
        # a new type has a new price: the agent's cap must count with it
        return any(f in self.changed for f in AGENT_FIELDS) or bool(self.new_type and self.spec.max_cost_usd)

    @property
    def bootstrap(self) -> bool:
        return any(f in self.changed for f in BOOTSTRAP_FIELDS)

    def flags(self) -> list[str]:
        return [FLAGS[f] for f in self.changed]


def _wanted(stored: InstanceSpec, wanted: InstanceSpec, name: str) -> Any:
    if name == "python_packages":  # added to what the instance has: the bootstrap never uninstalls
        return tuple(dict.fromkeys((*stored.python_packages, *wanted.python_packages)))
    return getattr(wanted, name)


def refuse_elsewhere(record: Record, provider_name: str | None, region: str | None) -> None:
    """`up NAME --provider P --region R` where NAME exists on another cloud or in another region: refused in one line
    (it was reused, and the place asked for silently dropped). Pure."""
    asked = [f"--provider {provider_name}" for _ in (1,) if provider_name and provider_name != record.provider]
    asked += [f"--region {region}" for _ in (1,) if region and region != record.region]
    if asked:
        raise UsageError(f"{record.name} exists in {record.provider}/{record.region}, not where "
                         f"{' '.join(asked)} asks", f"drop {' and '.join(a.split()[0] for a in asked)} to use it, "
                         f"or give the new one another name")


def plan_in_place(stored: InstanceSpec, wanted: InstanceSpec, given: frozenset[str], *, state: str,
                  powerable: bool = True) -> InPlacePlan:
    """What `up NAME --opts` changes on an existing instance in ``state``; a UsageError/ConflictError (one line,
    nothing applied) for anything that cannot change. Pure."""
    name = stored.name
    changes = {f: _wanted(stored, wanted, f) for f in sorted(given) if f in FLAGS
               and _wanted(stored, wanted, f) != getattr(stored, f)}
    fixed = [FLAGS[f] for f in changes if f not in (*AGENT_FIELDS, *BOOTSTRAP_FIELDS, "instance_type")]
    if fixed:
        raise UsageError(f"{', '.join(fixed)} cannot change on the existing instance {name!r} (set at launch)",
                         f"drop {'it' if len(fixed) == 1 else 'them'}, or `nbcloud down {name}` and "
                         f"`nbcloud up {name} …` anew")
    if changes.get("durable_outputs") is False:
        # the bootstrap never uninstalls: jupyter-collaboration and nbmodel would stay enabled through the venv
        raise UsageError(f"{name} runs cells on the server (durable outputs), which cannot be turned off in place",
                         f"drop --no-durable-outputs, or `nbcloud down {name}` and "
                         f"`nbcloud up {name} --no-durable-outputs` anew")
    if changes.get("gateway") is False:
        raise UsageError(f"{name} runs in gateway mode, which cannot be turned off in place",
                         f"drop --mode lab, or `nbcloud down {name}` and `nbcloud up {name}` anew")
    if not powerable:
        power = [FLAGS[f] for f in changes if f in ("instance_type", "idle_stop_seconds", "max_cost_usd")]
        if power:
            raise UsageError(f"{', '.join(power)} cannot apply to {name}, a machine you already had",
                             "drop them; its power and hardware are yours")
    new_type = changes.get("instance_type")
    if new_type is not None and state not in {"stopped", "stopping"}:
        raise ConflictError(f"{name} is {state} as {stored.instance_type}: its instance type changes only while it "
                            "is stopped", f"`nbcloud stop {name}`, then `nbcloud up {name} -t {new_type}`")
    return InPlacePlan(replace(stored, **changes), tuple(changes), new_type)


def refuse_cap_below_cost(ctx: Context, record: Record, plan: InPlacePlan) -> None:
    """A new --max-cost at or below what the instance has already cost would have its agent stop it at the next
    check: refused in one line instead (the user most likely meant a budget from now on, or a typo)."""
    from datetime import UTC, datetime

    from ..money.cost import format_usd
    from .costs import cost_fields

    cap = plan.spec.max_cost_usd
    if "max_cost_usd" not in plan.changed or not cap:
        return
    accrued = cost_fields(ctx, record, plan.spec, datetime.now(UTC))["accrued_usd"]
    if accrued is not None and accrued >= cap:
        spent = format_usd(accrued)
        raise UsageError(f"{record.name} has already cost {spent}, at or over --max-cost {format_usd(cap)}: its agent "
                         f"would stop it at once", f"give a cap above {spent} (it counts from launch), or "
                         f"`nbcloud stop {record.name}`")


def retype(ctx: Context, record: Record, provider: Any, instance_id: str, new_type: str,
           confirm: Callable[[str], bool], progress: Progress = no_progress) -> None:
    """A stopped instance gets ``new_type`` (ModifyInstanceAttribute), after the user confirmed."""
    info = provider.instance_type(new_type)  # an unknown type is refused before anything changes
    question = (f"Change the instance type of {record.name} from {record.instance_type} to {new_type} "
                f"({info.describe()})? It bills at the new type's price from this start")
    if not confirm(question):
        raise UsageError(f"instance type of {record.name} not changed", "confirm with `--yes`, or drop -t")
    progress(f"changing the instance type of {instance_id} to {new_type}")
    provider.set_instance_type(instance_id, new_type)
    ctx.store.update(record.name, instance_type=new_type,
                     spec=dict(record.spec or {}) | {"instance_type": new_type, "gpus": info.gpus})


def apply_in_place(ctx: Context, record: Record, provider: Any, plan: InPlacePlan,
                   progress: Progress = no_progress, timeout: float = 900) -> None:
    """Apply the SSH-side part of ``plan`` to the running instance and record the new spec (only once it holds)."""
    from ..ssh import session
    from .instances import install_secrets

    name = record.name
    if plan.agent or (plan.spec.gateway and "gateway" in plan.changed):
        progress("updating the agent's settings" if plan.agent else "sending the gateway token")
        # the token file is rewritten as it is; agent.json gets the new idle limit and cap with the current price
        install_secrets(ctx, name, plan.spec)
    if plan.bootstrap:
        progress("re-running the instance's bootstrap with " + ", ".join(
            FLAGS[f] for f in plan.changed if f in BOOTSTRAP_FIELDS))
        script, stdin = _bootstrap_script(ctx, record, provider, plan.spec)
        done = session.run(ctx.paths.ssh_config, f"nb-{name}", script, input=stdin, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = " | ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
            raise RemoteError(f"could not apply {', '.join(plan.flags())} on {name}: {tail or 'no output'}",
                              f"`nbcloud logs {name} --bootstrap` shows the setup log")
    stored = dict(record.spec or {})
    ctx.store.update(name, spec=stored | {f: _json(getattr(plan.spec, f)) for f in plan.changed})
    if "gateway" in plan.changed:
        from ..ssh.tunnel import stop_supervisor

        stop_supervisor(name)  # the tunnel comes back (`connect`) with the gateway's port forwarded too


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _bootstrap_script(ctx: Context, record: Record, provider: Any, spec: InstanceSpec) -> tuple[str, bytes]:
    from ..providers.base import manages_machines
    from ..remote import gateway_check
    from ..remote.bootstrap import render_bootstrap
    from ..ssh import keys
    from .costs import current_hourly
    from .instances import bootstrap_spec, parse_data_volume

    volume = parse_data_volume(spec.data_volume, record.name)
    found = provider.find_volume(volume[0]) if volume else None
    # the bootstrap carries no host key (user-data does); a machine the user had keeps its own: make none for it
    host_key = (keys.load_or_create_host_key(ctx.paths.keys_dir, record.name) if manages_machines(provider)
                else keys.KeyPair("", ""))
    boot = replace(bootstrap_spec(spec, provider, host_key, found.volume_id if found else None,
                                   current_hourly(ctx, record.name)), login_user=record.user)
    if spec.gateway:
        return gateway_check.enable_script(boot)
    return _RERUN, render_bootstrap(boot).encode()


# Run as the login user; the bootstrap (no secret in it) arrives on stdin. It rewrites the Jupyter config, installs
# what the venv lacks; when Jupyter's config changed it is restarted here, synchronously, so the readiness check
# that follows sees the new server and not the old one (the bootstrap's own restart does not wait).
_RERUN = r"""set -euo pipefail
root="@@ROOT@@"
cfg="$root/opt/nbcloud/etc/jupyter_server_config.py"
before=$(sha256sum "$cfg" 2>/dev/null || true)
""".replace("@@ROOT@@", SH_ROOT) + RERUN_FROM_STDIN + (
    r"""if [ "$(sha256sum "$cfg" 2>/dev/null || true)" != "$before" ]; then
  sudo systemctl restart nbcloud-jupyter.service
  echo "nbcloud: Jupyter restarted with its new config"
fi
echo "nbcloud: bootstrap re-run"
""")
