"""Gateway mode: notebooks and JupyterLab on the laptop, kernels on the instance behind a Kernel Gateway.

Two layers. The local lab (:mod:`nbcloud.ops.locallab`: :func:`check_gateway`, :func:`start_local_lab`,
:func:`stop_local_lab`) knows nothing about instances. :func:`lab`, :func:`stop_lab` and :func:`enable_gateway`
are the use cases behind `nbcloud lab` and `nbcloud gateway`.
Tokens travel only through environment variables and 0600 files, never on a command line.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import RemoteError, UsageError
from ..remote import gateway_check
from ..remote.secrets import install_secrets_script
from ..ssh import keys, session
from ..ssh.tunnel import stop_supervisor
from .context import Context, Progress, no_progress
from .instances import (
    bootstrap_spec,
    ensure_gateway_token,
    hourly_price,
    open_in_browser,
    parse_data_volume,
    stored_spec,
    token_path,
)
from .locallab import (
    EXPECTED_GATEWAY,
    GatewayInfo,
    LabResult,
    check_gateway,
    check_versions,
    lab_argv,
    lab_files,
    read_lab_state,
    require_lab,
    start_local_lab,
    stop_lab,
    stop_local_lab,
)
from .tunnels import connect

__all__ = [
    "EXPECTED_GATEWAY",
    "GatewayInfo",
    "LabResult",
    "check_gateway",
    "check_versions",
    "enable_gateway",
    "ensure_gateway_token",
    "jupyter_command",
    "lab",
    "lab_argv",
    "read_lab_state",
    "start_local_lab",
    "stop_lab",
    "stop_local_lab",
]


# ------------------------------------------------------------------------------------------------- the use cases


def lab(ctx: Context, name: str, root_dir: Path = Path("."), *, port: int | None = None, open_browser: bool = True,
        progress: Progress = no_progress) -> LabResult:
    record = ctx.record(name)
    if not (record.spec or {}).get("gateway"):
        raise UsageError(f"{name!r} is not in gateway mode", f"turn it on with `nbcloud gateway {name}`")
    require_lab()
    progress("tunnel")
    conn = connect(ctx, name, open_browser=False, progress=progress)
    if conn.gateway_url is None:
        raise UsageError(f"{name!r} is not in gateway mode", f"turn it on with `nbcloud gateway {name}`")
    if not conn.gateway_token:
        raise UsageError(f"the gateway token of {name!r} is not on this machine",
                         f"`nbcloud gateway {name}` makes and installs a new one")
    progress(f"checking the Kernel Gateway at {conn.gateway_url}")
    info = check_gateway(conn.gateway_url, conn.gateway_token, name=name)
    state_file, log_file = lab_files(ctx, name)
    result = start_local_lab(state_file=state_file, log_file=log_file, root_dir=root_dir, port=port,
                             gateway_url=conn.gateway_url, gateway_token=conn.gateway_token,
                             avoid_ports=ctx.store.ports_in_use(), name=name, progress=progress)
    opened = open_browser and open_in_browser(result.url)
    return LabResult(**{**asdict(result), "browser_opened": opened, "kernelspecs": info.kernelspecs})


def enable_gateway(ctx: Context, name: str, *, progress: Progress = no_progress,
                   timeout: float = 900) -> dict[str, Any]:
    """Install and start the Kernel Gateway on an existing instance, then re-forward the tunnel to include it."""
    record = ctx.record(name)
    ctx.key_path(name)
    alias = f"nb-{name}"
    # connect first: a stopped instance gets `nbcloud start NAME` as its hint, not an ssh timeout
    connect(ctx, name, open_browser=False, progress=progress)
    gateway_token = ensure_gateway_token(ctx, name)
    with ctx.name_lock(name):
        provider = ctx.provider_for(record)
        spec = replace(stored_spec(record), gateway=True)
        volume = parse_data_volume(spec.data_volume, name)
        found = provider.find_volume(volume[0]) if volume else None
        boot = bootstrap_spec(spec, provider, keys.load_or_create_host_key(ctx.paths.keys_dir, name),
                               found.volume_id if found else None, hourly_price(provider, spec.instance_type))
        progress("sending the gateway token")
        script, stdin = install_secrets_script(token_path(ctx, name).read_text().strip(), gateway_token=gateway_token,
                                               login_user=boot.login_user)
        session.run(ctx.paths.ssh_config, alias, script, input=stdin, timeout=60)
        progress(f"installing {EXPECTED_GATEWAY} (the instance's bootstrap, re-run with the gateway)")
        script, stdin = gateway_check.enable_script(boot)
        done = session.run(ctx.paths.ssh_config, alias, script, input=stdin, timeout=timeout, check=False)
        if done.returncode != 0:
            tail = " | ".join(line.strip() for line in done.stderr.strip().splitlines()[-3:])
            raise RemoteError(f"could not start the Kernel Gateway on {name}: {tail or 'no output'}",
                              f"`nbcloud logs {name} --bootstrap` shows the setup log")
        ctx.store.update(name, spec=dict(record.spec or {}) | {"gateway": True})
    progress("re-forwarding the tunnel with the gateway port")
    stop_supervisor(name)
    conn = connect(ctx, name, open_browser=False, progress=progress)
    info = check_gateway(conn.gateway_url or "", gateway_token, name=name)
    return {"name": name, "gateway_url": conn.gateway_url, "gateway_local_port": conn.gateway_local_port,
            "gateway_token": gateway_token, "jupyter_command": jupyter_command(conn.gateway_url or "", gateway_token),
            "kernelspecs": list(info.kernelspecs), "server_version": info.server_version}


def jupyter_command(gateway_url: str, gateway_token: str) -> str:
    """Your own `jupyter lab` with its kernels behind the gateway, as you would type it.

    The token goes in the environment (JupyterLab reads ``JUPYTER_GATEWAY_AUTH_TOKEN``), not in an argument: a
    command line is visible to every local user in ``ps``, the environment of another user's process is not.
    """
    return f"JUPYTER_GATEWAY_AUTH_TOKEN={shlex.quote(gateway_token)} jupyter lab --gateway-url={gateway_url}"
