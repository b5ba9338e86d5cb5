"""`nbcloud sandbox ...`: run the emulated EC2 on this machine (root: network namespaces; else loopback mode)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .output import emit, json_option, progress, table

__all__ = ["sandbox"]

_dir_option = click.option(
    "--dir", "sandbox_dir", type=click.Path(path_type=Path), default=None, envvar="NBCLOUD_SANDBOX_DIR",
    help="Sandbox directory (default: $NBCLOUD_HOME/sandbox).",
)


@click.group()
def sandbox() -> None:
    """Run the emulated cloud on this machine (no AWS account needed)."""


def _info_text(info: Any) -> str:
    return "\n".join([
        f"sandbox running ({info.mode}: {info.mode_reason or 'root'}) in {info.sandbox_dir}",
        f"  endpoint_url  {info.endpoint_url}   region {info.region}",
        f"  control_url   {info.control_url}",
        f"  subnet        {info.subnet}   caller_ip {info.caller_ip}",
        f"  instances     ssh {info.login_user}@<address> port {info.ssh_port}",
        f"  aws cli       {info.aws_cli}",
    ])


@sandbox.command()
@click.option("--os", "os_mode", is_flag=True,
              help="Instances boot a real OS (systemd-nspawn containers; root; `sandbox image build` first). "
                   "Same as NBCLOUD_SANDBOX_MODE=os.")
@_dir_option
@json_option
def start(os_mode: bool, sandbox_dir: Path | None, as_json: bool) -> None:
    """Start the sandbox daemon (idempotent) and wait until it is ready."""
    from ..sandbox import client

    with progress("Starting the sandbox", as_json) as update:
        info = client.start(sandbox_dir, progress=update, os_mode=os_mode)
    emit(info, as_json, _info_text)


def _status_text(result: dict[str, Any]) -> str:
    if not result["running"]:
        upcoming = (f"`sandbox start` would use {result['next_mode']} mode: {result['mode_reason']}"
                    if result.get("next_mode") else result.get("mode_reason", ""))
        return f"sandbox not running ({result['sandbox_dir']})" + (f"\n  {upcoming}" if upcoming else "")
    mode = f"{result['mode']} mode: {result.get('mode_reason') or 'root'}"
    head = (f"sandbox running ({mode}), pid {result['pid']}, subnet {result['subnet']}\n"
            f"  endpoint_url {result['endpoint_url']}\n"
            f"  instances: ssh {result.get('login_user', 'ubuntu')}@<address> port {result.get('ssh_port', 22)}\n"
            f"  aws cli: {result['aws_cli']}")
    if result["mode"] == "loopback":
        head += "\n  no link faults, no Jupyter bootstrap in loopback mode (they need root)"
    rows = [{**r, "pids": len(r["pids"])} for r in result["instances"]]
    body = table(rows, ["instance_id", "state", "address", "private_address", "namespace", "pids", "link", "boots"])
    return head + ("\n" + body if body else "\n  no instances")


@sandbox.command()
@_dir_option
@json_option
def status(sandbox_dir: Path | None, as_json: bool) -> None:
    """Show whether the sandbox runs, its mode and its instances (namespace, address, processes)."""
    from ..sandbox import client

    emit(client.status(sandbox_dir), as_json, _status_text)


def _reset_text(result: dict[str, Any]) -> str:
    removed = result.get("removed") or {}
    # a daemon that stops removes its instances' namespaces and links itself: what is counted here was left over
    # (by a daemon that was killed), and "removed 0 namespace(s)" read as if nothing had been cleaned
    parts = [f"{n} {what}" for n, what in ((len(removed.get("namespaces", [])), "leftover namespace(s)"),
                                           (len(removed.get("links", [])), "leftover link(s)")) if n]
    daemon = ("stopped the daemon (it removed its instances and their namespaces)" if result["stopped_daemon"]
              else "no daemon was running")
    forgotten = result.get("forgotten") or []
    local = f"; stopped the tunnels and labs of {', '.join(forgotten)} and forgot them here" if forgotten else ""
    removed_text = ", ".join([*parts, "the instances' disks"])
    return f"sandbox reset: {daemon}; removed {removed_text}{local}"


@sandbox.command()
@_dir_option
@json_option
def reset(sandbox_dir: Path | None, as_json: bool) -> None:
    """Stop the daemon and remove every instance, namespace, link, route and disk the sandbox made.

    This machine's tunnels and local labs to those instances stop, and the instances are forgotten here."""
    from ..ops.sandbox import reset_sandbox

    with progress("Resetting the sandbox", as_json):
        result = reset_sandbox(sandbox_dir)
    emit(result, as_json, _reset_text)


@sandbox.command()
@click.argument("instance_id")
@click.argument("kind", type=click.Choice(["link-down", "link-up", "reboot", "spot-notice"]))
@click.option("--seconds", type=float, default=120.0, show_default=True,
              help="spot-notice: seconds until the instance is reclaimed.")
@_dir_option
@json_option
def fault(instance_id: str, kind: str, seconds: float, sandbox_dir: Path | None, as_json: bool) -> None:
    """Inject a fault into a running instance: cut or heal its link, reboot it, announce a spot reclaim."""
    from ..sandbox import client

    result = client.fault(instance_id, kind, sandbox_dir, seconds=seconds)
    emit(result, as_json, lambda r: f"{r['instance_id']}: {r['fault']}" + (f" at {r['time']}" if "time" in r else ""))


@sandbox.command("fault-api")
@click.argument("operation")
@click.argument("error_code")
@click.option("--count", type=int, default=1, show_default=True, help="How many calls fail (0 clears).")
@click.option("--zone", default=None, help="Only calls placed in this availability zone (e.g. us-east-1a).")
@_dir_option
@json_option
def fault_api(operation: str, error_code: str, count: int, zone: str | None, sandbox_dir: Path | None,
              as_json: bool) -> None:
    """Make the next COUNT calls of an API operation (e.g. RunInstances) fail with an AWS error code.

    ERROR_CODE ``delay:SECONDS`` carries the call out and holds its answer back that long (a slow or lost answer).
    """
    from ..sandbox import client

    result = client.fault_api(operation, error_code, count, sandbox_dir, zone=zone)
    emit(result, as_json, lambda r: f"the next {r['count']} {r['operation']} call(s)"
                                    + (f" in {r['zone']}" if r.get("zone") else "") + f" fail with {r['code']}")


@sandbox.group()
def image() -> None:
    """The root filesystem that real-OS instances boot (`sandbox start --os`), built once per machine."""


def _image_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "no instance image built yet: `nbcloud sandbox image build` (root, a few minutes, once per machine)"
    return (f"instance image {info['path']}\n  built {info['built_at']} in {info['build_seconds']:.0f} s, "
            f"{info['size_bytes'] / 1e6:.0f} MB, Debian {info['suite']} from {info['mirror']}")


@image.command("build")
@click.option("--force", is_flag=True, help="Build again even when an image exists.")
@json_option
def image_build(force: bool, as_json: bool) -> None:
    """Build the Debian root filesystem (mmdebstrap; installs mmdebstrap and systemd-container when missing)."""
    from ..sandbox import osimage

    with progress("Building the instance image", as_json) as update:
        info = osimage.build_image(update, force=force)
    emit(info, as_json, _image_text)


@image.command("show")
@json_option
def image_show(as_json: bool) -> None:
    """Where the instance image is and when it was built (nothing is built)."""
    from ..sandbox import osimage

    emit(osimage.image_info() or {"path": None}, as_json, lambda i: _image_text(i if i.get("path") else None))
