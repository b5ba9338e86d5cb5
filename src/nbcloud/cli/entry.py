"""The `nbcloud` console script's entry: the first of our code that runs.

A Ctrl-C while Python is still importing the CLI (click, the command modules: the first ~0.3 s) raises
KeyboardInterrupt before :func:`nbcloud.cli.output.run_cli` can render it, and Python prints a traceback. Here it
ends as every other interrupt does: one line (or one JSON document with ``--json``) and exit code 130. Nothing had
been asked of any cloud yet, so the line can say so.
"""

from __future__ import annotations

import json
import sys

from ..errors import NbcloudError

__all__ = ["main"]


def main() -> None:
    try:
        from .app import main as run_app

        run_app()
    except KeyboardInterrupt:
        error = NbcloudError("interrupted while starting, before anything was asked of a cloud",
                             "run the command again")
        if "--json" in sys.argv:
            print(json.dumps({"error": error.to_json()}, indent=2))
        else:
            print(error.one_line(), file=sys.stderr)
        raise SystemExit(130) from None
