"""A Ctrl-C while the CLI is still importing ends in one line and exit 130, as every other interrupt: no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# the console script's own code (`nbcloud = "nbcloud.cli.entry:main"`), with a KeyboardInterrupt raised where a
# Ctrl-C in the first ~0.3 s lands: inside the import of click, which nbcloud.cli.app imports first
INTERRUPTED_IMPORT = """
import sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            raise KeyboardInterrupt
sys.meta_path.insert(0, CtrlC())
sys.argv = ["nbcloud", *sys.argv[1:]]
from nbcloud.cli.entry import main
main()
"""


@pytest.mark.parametrize("json_mode", [False, True], ids=["text", "json"])
def test_an_interrupt_during_the_imports_is_one_line_and_exit_130(json_mode: bool) -> None:
    args = ["status", "--json"] if json_mode else ["status"]
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT, *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 130, done
    assert "Traceback" not in done.stderr + done.stdout
    if json_mode:
        assert json.loads(done.stdout)["error"]["message"].startswith("interrupted"), done
    else:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: interrupted"), done


def test_the_console_scripts_start_at_the_entry() -> None:
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"nbcloud": "nbcloud.cli.entry:main", "jupyter-nbcloud": "nbcloud.cli.entry:main"}
