"""Rendering at the edge: text or one JSON document, progress on a TTY, and the one error handler.

Commands return plain data (dataclasses, dicts, lists); this module decides how it looks. With ``--json``
stdout carries exactly one JSON document, errors included (``{"error": {"type", "message", "hint"}}``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from ..errors import Interrupted, NbcloudError, UsageError

__all__ = ["emit", "json_option", "progress", "run_cli", "to_jsonable"]

_JSON_MODE = False


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` on a command: remember the mode globally so errors are rendered as JSON too."""

    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        global _JSON_MODE
        _JSON_MODE = _JSON_MODE or value
        return value

    return click.option(
        "--json", "as_json", is_flag=True, expose_value=True, is_eager=True, callback=remember,
        help="Print one JSON document on stdout (for scripts).",
    )(func)


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_json"):
            return to_jsonable(value.to_json())
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN/Infinity are not JSON: an unknown figure is null
    return value


def emit(result: Any, as_json: bool, text: Callable[[Any], str | None] | str | None = None) -> None:
    """Print ``result`` as JSON, or as the text that ``text`` makes of it."""
    if as_json:
        click.echo(json.dumps(to_jsonable(result), indent=2, sort_keys=True, allow_nan=False))
        return
    rendered = text(result) if callable(text) else text
    if rendered:
        click.echo(rendered.translate(_CONTROL))


# Control characters other than newline and tab, dropped from text output: much of what `status` shows comes from
# the instance (the agent's reasons, a hold's reason), and an escape sequence there would drive the user's terminal.
_CONTROL = dict.fromkeys(c for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A))


def err(message: str) -> None:
    """A line for the human on stderr (never mixed into --json stdout)."""
    click.echo(message, err=True)


@contextlib.contextmanager
def progress(message: str, as_json: bool = False) -> Iterator[Callable[[str], None]]:
    """A spinner on a TTY, a plain line on stderr otherwise, nothing at all in JSON mode.

    Yields a function that updates the message as the slow operation goes through its steps.
    """
    if as_json or os.environ.get("NBCLOUD_QUIET"):
        yield lambda _msg: None
        return
    if not sys.stderr.isatty():
        # the heading goes out with the first step: a command refused before any step (an unknown name) prints
        # its one error line and nothing else
        started = False

        def step(msg: str) -> None:
            nonlocal started
            if not started:
                started = True
                err(f"{message} …")
            err(f"  {msg}")

        yield step
        return
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(message) as status:
        yield lambda msg: status.update(f"{message}: {msg}")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain aligned table; rich is kept for progress so `status` stays fast to import."""
    if not rows:
        return ""
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _render_error(error: NbcloudError) -> None:
    if _JSON_MODE or "--json" in sys.argv:
        click.echo(json.dumps({"error": error.to_json()}, indent=2))
    else:
        err(error.one_line())


def _interrupted() -> NbcloudError:
    """An interrupt the command did not check after: claim nothing about what it left."""
    return NbcloudError("interrupted", "`nbcloud status` shows what exists; `nbcloud doctor --orphans` finds leftovers")


def _is_bare_group(error: click.ClickException) -> bool:
    """A group called without its subcommand (click >= 8.2 raises this instead of printing the help itself)."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    return no_args is not None and isinstance(error, no_args) and error.ctx is not None


def run_cli(group: click.Group, argv: list[str] | None = None, prog_name: str = "nbcloud") -> None:
    """Run the click group; every failure ends here as one line (or one JSON document) and an exit code."""
    debug = bool(os.environ.get("NBCLOUD_DEBUG")) or "--debug" in (argv if argv is not None else sys.argv)
    try:
        group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except NbcloudError as error:
        if debug:
            raise
        _render_error(error)
        sys.exit(error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort as abort:  # click turns KeyboardInterrupt into Abort, the original as the cause
        stop = abort.__cause__
        _render_error(stop.as_error() if isinstance(stop, Interrupted) else _interrupted())
        sys.exit(130)
    except click.ClickException as bad:
        if _is_bare_group(bad):  # `nbcloud`, `nbcloud sandbox`: the help, as --help prints it, and success
            click.echo(bad.ctx.get_help())  # type: ignore[union-attr]
            sys.exit(0)
        if debug:
            raise
        message = bad.format_message()
        hint = "see `nbcloud --help`"
        if isinstance(bad, click.UsageError) and bad.ctx is not None:
            hint = f"see `{bad.ctx.command_path} --help`"
        _render_error(UsageError(message, hint))
        sys.exit(2)
    except KeyboardInterrupt as stop:
        _render_error(stop.as_error() if isinstance(stop, Interrupted) else _interrupted())
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
