"""connect, disconnect, sync (and the hidden entry the tunnel supervisor runs as)."""

from __future__ import annotations

from pathlib import Path

import click

from .complete import instance_names
from .output import emit, err, json_option, progress


def _ctx():
    from ..ops import Context

    return Context.create()


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Local port (remembered per instance).")
@click.option("--no-browser", is_flag=True, help="Print the URL instead of opening a browser.")
@click.option("--forward", "forward", multiple=True, metavar="[LOCAL:]REMOTE",
              help="Also forward this port of the instance (repeatable), e.g. 6006 for TensorBoard.")
@json_option
def connect(name: str, port: int | None, no_browser: bool, forward: tuple[str, ...], as_json: bool) -> None:
    """Open NAME's JupyterLab through a self-healing tunnel whose connections survive outages."""
    from .. import ops

    with progress(f"connecting to {name}", as_json) as step:
        result = ops.connect(_ctx(), name, port=port, open_browser=not (no_browser or as_json), progress=step,
                             forward=list(forward) if forward else None)
    if result.tunnel_note and not as_json:
        err(f"note: {result.tunnel_note}")

    def text(r: ops.ConnectResult) -> str:
        lines = [f"{r.name}: tunnel {r.tunnel} on 127.0.0.1:{r.local_port}",
                 f"  {r.url}" + ("" if r.browser_opened else "   (open this in your browser)")]
        if r.gateway_url:
            lines.append(f"  kernel gateway: {r.gateway_url}  (`nbcloud lab {r.name}` uses it)")
        lines += [f"  forward: 127.0.0.1:{f['local_port']} → {r.name}:{f['remote_port']}" for f in r.forwards]
        if getattr(r, "dashboard_url", None):
            lines.append(f"  Dask dashboard: {r.dashboard_url}")
        return "\n".join(lines)

    emit(result, as_json, text)


@click.command()
@click.argument("name", shell_complete=instance_names)
@json_option
def disconnect(name: str, as_json: bool) -> None:
    """Stop the tunnel to NAME."""
    from .. import ops

    emit(ops.disconnect(_ctx(), name), as_json, lambda r: f"{r['name']}: tunnel down")


@click.command()
@click.argument("name", shell_complete=instance_names)
@click.argument("path", type=click.Path(path_type=Path), default=Path("."))
@click.option("--pull", is_flag=True, help="Copy from the instance to PATH instead.")
@click.option("--remote", default=None, help="Folder on the instance (default ~/<folder name>).")
@click.option("--delete", is_flag=True, help="Delete files on the receiving side that the sender lacks.")
@json_option
def sync(name: str, path: Path, pull: bool, remote: str | None, delete: bool, as_json: bool) -> None:
    """Push a local folder to NAME (respecting .gitignore), or --pull results back."""
    from .. import ops

    result = ops.sync(_ctx(), name, path, pull=pull, remote=remote, delete=delete)
    emit(result, as_json, lambda r: f"{r.direction}: {r.local} {'←' if r.direction == 'pull' else '→'} "
                                    f"nb-{r.name}:{r.remote}")
