"""gateway and lab: kernels on the instance, notebooks and UI on the laptop."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UsageError
from .output import json_option


@click.command()
@click.argument("name")
@json_option
def gateway(name: str, as_json: bool) -> None:
    """Run a Kernel Gateway on NAME (next to its JupyterLab)."""
    raise UsageError("`nbcloud gateway` is not available yet", f"launch with `nbcloud up {name} --mode gateway`")


@click.command()
@click.argument("name")
@click.argument("path", type=click.Path(path_type=Path), default=Path("."))
@click.option("--no-browser", is_flag=True)
@json_option
def lab(name: str, path: Path, no_browser: bool, as_json: bool) -> None:
    """Start a local JupyterLab in PATH whose kernels run on NAME."""
    raise UsageError("`nbcloud lab` is not available yet", "use `nbcloud connect NAME` for now")
