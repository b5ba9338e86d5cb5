"""The instance plumbing every use case shares, below all of them: nothing here imports a use case.

A record's spec and back (:func:`stored_spec`, :func:`spec_json`), the store kept in step with the cloud
(:func:`sync_record`, :func:`refresh`), the security group's rules (:func:`ingress_rules`), the bootstrap's
spec, the secrets sent over ssh and the token files, waiting for Jupyter, and the local traces of an instance
(ssh entry and pin, keys, secrets, tunnel and local lab: :func:`write_access`, :func:`stop_tunnel`,
:func:`forget_locally`).
"""

from __future__ import annotations

import re
import secrets as token_secrets
import shutil
from dataclasses import asdict
from datetime import UTC, datetime

from ..config import write_private
from ..errors import ConflictError, RemoteError, UsageError
from ..models import Instance, InstanceSpec, normalize_cidr
from ..money.cost import stop_event_time
from ..money.quotes import start_price
from ..providers.base import IngressRule, Provider, manages_machines
from ..remote import secrets
from ..remote.ready import wait_ready_script
from ..remote.spec import BootstrapSpec
from ..ssh import config as ssh_config
from ..ssh import keys, session
from ..ssh.tunnel import stop_supervisor
from ..state import Record
from .agent import agent_check_period, idle_stop_floor
from .context import Context, Progress, no_progress
from .costs import current_hourly
from .keeper_process import cluster_dir, stop_keeper
from .locallab import stop_lab

__all__ = ["DATA_DEVICE", "DEFAULT_DATA_GB", "GATEWAY_PORT", "JUPYTER_PORT", "bootstrap_spec",
           "ensure_gateway_token", "forget_locally", "hourly_price", "ingress_rules", "install_secrets",
           "not_running_hint", "open_in_browser", "parse_data_volume", "refresh", "remove_access", "repin_ingress",
           "require_running", "secrets_script", "spec_json", "stop_tunnel", "stored_spec", "sync_record",
           "token_path", "wait_ready", "write_access"]

DATA_DEVICE = "/dev/sdf"
DEFAULT_DATA_GB = 50
JUPYTER_PORT = 8888
GATEWAY_PORT = 8889

_VOLUME = re.compile(r"^(?:(?P<name>[a-z][a-z0-9-]{0,62})(?::(?P<size>\d+))?|(?P<only_size>\d+))$")


def parse_data_volume(text: str | None, instance_name: str) -> tuple[str, int] | None:
    """'100' → (instance name, 100 GB); 'proj' → ('proj', default); 'proj:200' → ('proj', 200)."""
    if not text:
        return None
    match = _VOLUME.match(text.strip())
    if not match:
        raise UsageError(f"invalid --data-volume {text!r}", "write SIZE (GB) or NAME[:SIZE], e.g. 100 or project:100")
    if match.group("only_size"):
        return instance_name, int(match.group("only_size"))
    return match.group("name"), int(match.group("size") or DEFAULT_DATA_GB)


def ingress_rules(ctx: Context, provider: Provider, spec: InstanceSpec) -> list[IngressRule]:
    cidr = normalize_cidr(spec.allow_cidr) if spec.allow_cidr else f"{provider.caller_ip()}/32"
    rules = [IngressRule(22, cidr, "nbcloud ssh")]
    if spec.public:
        rules.append(IngressRule(JUPYTER_PORT, cidr, "nbcloud jupyter (public mode)"))
    return rules


def bootstrap_spec(spec: InstanceSpec, provider: Provider, host_key: keys.KeyPair, volume_id: str | None,
                    hourly: float | None):
    return BootstrapSpec(
        name=spec.name, jupyter_port=JUPYTER_PORT, gateway=spec.gateway, gateway_port=GATEWAY_PORT,
        durable_outputs=spec.durable_outputs, public=spec.public, cull_idle_minutes=spec.cull_idle_minutes,
        idle_stop_seconds=spec.idle_stop_seconds, max_cost_usd=spec.max_cost_usd, hourly_usd=hourly,
        python_packages=spec.python_packages, requirements=spec.requirements, data_volume_id=volume_id,
        package_env=dict(provider.package_env), host_key_private=host_key.private_openssh,
        # who logs in is the provider's to say (EC2 images: ubuntu; a sandbox without root: the current user)
        login_user=provider.login_user,
        host_key_public=host_key.public_openssh, check_period=agent_check_period(), idle_floor=idle_stop_floor(),
    )


def spec_json(spec: InstanceSpec) -> dict[str, object]:
    return asdict(spec)


def hourly_price(provider: Provider, instance_type: str) -> float | None:
    try:
        from ..money.pricing import load_prices

        return load_prices().hourly(instance_type, provider.region)
    except Exception:  # a price is information, never a reason to fail a launch
        return None


def write_access(ctx: Context, instance: Instance, key_path, host_key: keys.KeyPair) -> None:
    alias = f"nb-{instance.name}"
    ssh_config.pin_host_key(ctx.paths, alias, host_key.public_blob)
    ssh_config.write_entry(ctx.paths, ssh_config.SshEntry(alias=alias, host=instance.host or "", user=instance.user,
                                                          identity_file=key_path, known_hosts=ctx.paths.known_hosts,
                                                          port=instance.ssh_port))
    ssh_config.ensure_include(ctx.paths)


def remove_access(ctx: Context, name: str) -> None:
    ssh_config.remove_entry(ctx.paths, f"nb-{name}")
    ssh_config.unpin_host_key(ctx.paths, f"nb-{name}")


def token_path(ctx: Context, name: str):
    return ctx.paths.secrets_dir / f"{name}.token"


def install_secrets(ctx: Context, name: str, spec: InstanceSpec, *, password_hash: str | None = None,
                     tls: tuple[str, str] | None = None) -> None:
    script, stdin = secrets_script(ctx, name, spec, password_hash=password_hash, tls=tls)
    session.run(ctx.paths.ssh_config, f"nb-{name}", script, input=stdin, timeout=60)


def secrets_script(ctx: Context, name: str, spec: InstanceSpec, *, password_hash: str | None = None,
                    tls: tuple[str, str] | None = None) -> tuple[str, bytes]:
    """Token (and, public mode, password hash + TLS cert/key) as a script and the stdin that carries them.

    Secrets travel on the SSH session's stdin, never on a command line.
    """
    path = token_path(ctx, name)
    if not path.exists():
        write_private(path, secrets.new_token())
    token = path.read_text().strip()
    gateway_token = None
    if spec.gateway:
        gateway_token = ensure_gateway_token(ctx, name)
    cert_pem, key_pem = tls if tls else (None, None)
    record = ctx.store.get(name)
    return secrets.install_secrets_script(token=token, gateway_token=gateway_token,
                                          login_user=record.user if record else secrets.LOGIN_USER,
                                          password_hash=password_hash, cert_pem=cert_pem, key_pem=key_pem,
                                          idle_stop_seconds=spec.idle_stop_seconds,
                                          max_cost_usd=spec.max_cost_usd,
                                          hourly_usd=_hourly_from_store(ctx, name))


def _hourly_from_store(ctx: Context, name: str) -> float | None:
    """The price the agent's budget cap counts with: the one recorded for the running period (spot: spot's)."""
    return current_hourly(ctx, name)


def wait_ready(ctx: Context, name: str, timeout: float, progress: Progress = no_progress) -> None:
    record = ctx.store.get(name)
    tls = bool(record and (record.spec or {}).get("public"))  # public mode: Jupyter speaks only https
    result = session.run(ctx.paths.ssh_config, f"nb-{name}", wait_ready_script(JUPYTER_PORT, timeout, tls=tls),
                         timeout=timeout + 30, check=False)
    if result.returncode != 0:
        tail = " | ".join(line.strip() for line in result.stdout.strip().splitlines()[-3:])
        raise RemoteError(f"Jupyter did not come up on {name}: {tail or result.stderr.strip() or 'no output'}",
                          f"`nbcloud logs {name} --bootstrap` shows the setup log")



def stored_spec(record: Record) -> InstanceSpec:
    data = dict(record.spec or {})
    data.setdefault("name", record.name)
    data["tags"] = tuple(tuple(t) for t in data.get("tags", ()))
    data["python_packages"] = tuple(data.get("python_packages", ()))
    data["fallback_types"] = tuple(data.get("fallback_types", ()))
    known = InstanceSpec.__dataclass_fields__
    return InstanceSpec(**{k: v for k, v in data.items() if k in known})


def sync_record(ctx: Context, record: Record, instance: Instance | None, provider: Provider | None = None) -> None:
    """Record what the cloud says into the store: state, address, and the transitions cost is made of.

    A stop this machine did not make (the agent's idle stop or budget cap) is recorded at the cloud's own stop time
    (``Instance.stopped_at``), not when nbcloud happens to look, so the period bills only until then. A period that
    begins is recorded with the price it bills at (spot: the spot price now; ``provider`` saves building one).
    """
    if instance is None:
        if record.state != "gone":
            ctx.store.update(record.name, state="gone")
            if record.instance_id:
                ctx.store.record_state(record.name, record.instance_id, "terminated")
        return
    last = ctx.store.last_state(record.name, instance.instance_id)
    if instance.state != last:
        at: datetime | None = None
        hourly: float | None = None
        if instance.state == "running":
            if instance.lifecycle == "spot" and provider is None:
                provider = ctx.provider_for(record)
            hourly = start_price(provider, instance)
        elif instance.state != "pending":
            at = stop_event_time(instance.stopped_at, ctx.store.last_event_at(record.name, instance.instance_id),
                                 datetime.now(UTC))
        ctx.store.record_state(record.name, instance.instance_id, instance.state, at=at, hourly=hourly)
    if instance.host and instance.host != record.host:
        _rewrite_host(ctx, record.name, instance)
    ctx.store.update(record.name, state=instance.state, host=instance.host or record.host,
                     instance_id=instance.instance_id, lifecycle=instance.lifecycle)


def _rewrite_host(ctx: Context, name: str, instance: Instance) -> None:
    """The address moved: rewrite the entry with the login user and port the provider reports (not the record's:
    a loopback sandbox's sshd listens on a high port and logs in the current user)."""
    key_path = ctx.paths.keys_dir / name
    ssh_config.write_entry(ctx.paths, ssh_config.SshEntry(alias=f"nb-{name}", host=instance.host or "",
                                                          user=instance.user, identity_file=key_path,
                                                          known_hosts=ctx.paths.known_hosts, port=instance.ssh_port))


def refresh(ctx: Context, name: str, repin: bool = True) -> Instance | None:
    """Ask the cloud about one instance; rewrite its ssh HostName and re-pin its SG to the caller if needed."""
    record = ctx.record(name)
    provider = ctx.provider_for(record)
    instance = provider.find(name)
    sync_record(ctx, record, instance)
    if repin and instance is not None and instance.state == "running" and instance.security_group_id:
        repin_ingress(ctx, provider, record, instance)
    return instance


def not_running_hint(ctx: Context, record: Record) -> str:
    """`nbcloud start` only where nbcloud powers the machine; a machine the user already had is theirs to power."""
    if manages_machines(ctx.provider_for(record)):
        return f"start it with `nbcloud start {record.name}`"
    return (f"nbcloud does not power this machine: check that it is on and reachable (`ssh nb-{record.name}`), "
            f"then `nbcloud connect {record.name}` again")


def require_running(ctx: Context, name: str) -> Instance:
    """``name``'s instance as the cloud reports it now, or one line saying it is not running and how to start it
    (exit 2): what ssh says of a stopped machine ("Invalid argument", a timeout) does not say it is off."""
    record = ctx.record(name)
    instance = refresh(ctx, name)
    if instance is None:
        raise ConflictError(f"instance {name!r} no longer exists", f"`nbcloud up {name}` makes a new one")
    if instance.state != "running":
        raise ConflictError(f"instance {name!r} is {instance.state}", not_running_hint(ctx, record))
    return instance


def repin_ingress(ctx: Context, provider: Provider, record: Record, instance: Instance) -> bool:
    spec = stored_spec(record)
    if spec.allow_cidr:
        return False
    return provider.set_ingress(instance.security_group_id or "", ingress_rules(ctx, provider, spec))


def stop_tunnel(ctx: Context, name: str) -> None:
    """The tunnel, a local lab (gateway mode) and a spot cluster's keeper must not outlive the instance they
    serve."""
    stop_supervisor(name)
    stop_lab(ctx, name)
    stop_keeper(ctx, name)


def forget_locally(ctx: Context, name: str) -> None:
    """Every local trace of ``name`` (run after ``stop_tunnel``): ssh entry and pin, keys, secrets, tunnel and
    local-lab files, the record. The empty lock files stay (``locks/NAME.lock``, held by the caller, and
    ``lab/NAME.lock``): unlinking a lock file lets a second process lock a new file while the first still holds
    the old one."""
    p = ctx.paths
    ssh_config.remove_entry(p, f"nb-{name}")
    ssh_config.unpin_host_key(p, f"nb-{name}")
    keys.remove_keys(p.keys_dir, name)
    # written by launch, gateway and public (secrets), ssh.tunnel (tunnels) and gateway's local lab (lab)
    files = [p.secrets_dir / f"{name}{suffix}" for suffix in (".token", ".gateway-token", ".crt")]
    files += [p.tunnels_dir / f"{name}{suffix}" for suffix in (".json", ".args.json", ".log", ".log.1")]
    files += [p.data_dir / "lab" / f"{name}{suffix}" for suffix in (".json", ".log", ".token")]
    for path in files:
        path.unlink(missing_ok=True)
    # a cluster's CA key, certificates and keeper state (teardown removes them; a sandbox reset comes here)
    shutil.rmtree(cluster_dir(ctx, name), ignore_errors=True)
    ctx.store.delete(name)



def ensure_gateway_token(ctx: Context, name: str) -> str:
    """The gateway token of ``name``: made once on this machine, 0600, sent to the instance only over ssh stdin."""
    path = ctx.paths.secrets_dir / f"{name}.gateway-token"
    if not path.exists():
        write_private(path, token_secrets.token_urlsafe(32))
    return path.read_text().strip()



def open_in_browser(url: str) -> bool:
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    return bool(browser.open(url))
