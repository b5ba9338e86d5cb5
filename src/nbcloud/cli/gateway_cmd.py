"""gateway and lab: kernels on the instance, notebooks and UI on the laptop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .complete import instance_names
from .output import emit, json_option, progress


def _ctx():
    from ..ops import Context

    return Context.create()


@click.command()
@click.argument("name", shell_complete=instance_names)
@json_option
def gateway(name: str, as_json: bool) -> None:
    """Turn gateway mode on for NAME: a Kernel Gateway next to its JupyterLab, forwarded by the tunnel.

    Then `nbcloud lab NAME` runs JupyterLab on this machine with its kernels on NAME.
    """
    from ..ops.gateway import enable_gateway

    with progress(f"enabling the Kernel Gateway on {name}", as_json) as step:
        result = enable_gateway(_ctx(), name, progress=step)

    def text(r: dict[str, Any]) -> str:
        return (f"{r['name']}: Kernel Gateway on {r['gateway_url']} (jupyter_server {r['server_version']}), "
                f"kernels: {', '.join(r['kernelspecs']) or '-'}\n  next: `nbcloud lab {r['name']} .`\n"
                f"  or your own JupyterLab: {r['jupyter_command']}")

    emit(result, as_json, text)


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.argument("path", type=click.Path(path_type=Path), default=Path("."))
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--port", type=click.IntRange(1024, 65535), default=None, help="Local port of the local JupyterLab.")
@click.option("--stop", is_flag=True, help="Stop the local JupyterLab of NAME (its kernels on NAME end with it).")
@json_option
def lab(name: str, path: Path, no_browser: bool, port: int | None, stop: bool, as_json: bool) -> None:
    """Start a local JupyterLab in PATH whose kernels run on NAME (notebooks stay on this machine)."""
    from ..ops import gateway as gw

    if stop:
        stopped = gw.stop_lab(_ctx(), name)
        emit(stopped, as_json, lambda r: f"{r['name']}: local JupyterLab "
                                         f"{'stopped' if r['stopped'] else 'was not running'}")
        return
    with progress(f"local JupyterLab with kernels on {name}", as_json) as step:
        result = gw.lab(_ctx(), name, path, port=port, open_browser=not (no_browser or as_json), progress=step)

    def text(r: gw.LabResult) -> str:
        how = "already running" if r.reused else "started"
        lines = [f"{name}: local JupyterLab {how} in {r.root_dir} (pid {r.pid}), kernels on {name} via "
                 f"{r.gateway_url}",
                 f"  {r.url}" + ("" if r.browser_opened else "   (open this in your browser)"),
                 f"  log: {r.log_file} · stop: `nbcloud lab {name} --stop`"]
        return "\n".join(lines)

    emit(result, as_json, text)
