"""The `nbcloud` command: a thin shell over the library.

Commands are loaded lazily (``nbcloud --help`` imports no boto3, moto, asyncssh or jupyter), each one calls a
single library function and hands its result to :mod:`nbcloud.cli.output`. Errors from the library are
rendered once, in :func:`main`.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .. import __version__

# command name -> "module:attribute" below nbcloud.cli; the module is imported only when the command runs.
COMMANDS: dict[str, str] = {
    "up": "instances_cmd:up",
    "status": "instances_cmd:status",
    "list": "instances_cmd:list_",
    "stop": "instances_cmd:stop",
    "start": "instances_cmd:start",
    "down": "instances_cmd:down",
    "ssh": "instances_cmd:ssh",
    "logs": "instances_cmd:logs",
    "doctor": "instances_cmd:doctor",
    "connect": "connect_cmd:connect",
    "disconnect": "connect_cmd:disconnect",
    "sync": "connect_cmd:sync",
    "autostop": "cost_cmd:autostop",
    "hold": "cost_cmd:hold",
    "release": "cost_cmd:release",
    "cost": "cost_cmd:cost",
    "prices": "cost_cmd:prices",
    "volumes": "storage_cmd:volumes",
    "image": "storage_cmd:image",
    "gateway": "gateway_cmd:gateway",
    "lab": "gateway_cmd:lab",
    "sandbox": "sandbox_cmd:sandbox",
    "cluster": "cluster_cmd:cluster",
}

SHORT_HELP: dict[str, str] = {
    "up": "Launch (or reuse) an instance with Jupyter and connect to it.",
    "status": "Show instances, their state, cost and tunnels.",
    "list": "List what nbcloud manages, found by cloud tags.",
    "stop": "Stop an instance (its disks keep billing).",
    "start": "Start a stopped instance.",
    "down": "Terminate an instance and delete what nbcloud made for it.",
    "ssh": "Open a shell (or run a command) on an instance.",
    "logs": "Show the Jupyter (or bootstrap) log of an instance.",
    "doctor": "Check the setup; find and remove orphaned resources.",
    "connect": "Open the notebook in the browser through a self-healing tunnel.",
    "disconnect": "Stop the tunnel to an instance.",
    "sync": "Push a local folder to the instance (or --pull results).",
    "autostop": "Change the idle limit after which the instance stops itself.",
    "hold": "Keep an instance running even when idle (until release).",
    "release": "Let a held instance stop itself when idle again.",
    "cost": "Report cost per instance and in total.",
    "prices": "Refresh or show the price table.",
    "volumes": "List persistent data volumes.",
    "image": "Bake, list and delete machine images.",
    "gateway": "Run a Kernel Gateway on an instance.",
    "lab": "Run a local JupyterLab whose kernels run on the instance.",
    "sandbox": "Run the emulated cloud on this machine (no AWS account needed).",
    "cluster": "Grow the notebook into a Dask cluster (workers on more instances).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SHORT_HELP)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing commands for --help must stay cheap: describe them without importing their modules.
        with formatter.section("Commands"):
            formatter.write_dl(list(SHORT_HELP.items()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(f"nbcloud.cli.{module_name}")
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="nbcloud")
@click.option("--debug", is_flag=True, envvar="NBCLOUD_DEBUG", help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """A Jupyter server on a cloud machine in one command.

    \b
    Try it without an AWS account:
      nbcloud up demo --provider sandbox
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def prog_name(argv0: str) -> str:
    """``jupyter nbcloud`` runs the ``jupyter-nbcloud`` script: its usage lines and its shell completion
    (``_JUPYTER_NBCLOUD_COMPLETE``) must name that program, not ``nbcloud``."""
    return "jupyter-nbcloud" if os.path.basename(argv0) == "jupyter-nbcloud" else "nbcloud"


def main(argv: list[str] | None = None) -> None:
    from .output import run_cli

    run_cli(cli, argv, prog_name=prog_name(sys.argv[0]))


if __name__ == "__main__":  # pragma: no cover
    main()
