"""Durable outputs are `up`'s default (issue 13, item 2): the default bootstrap runs cells on the server, the default
never counts as an option "given" to an existing instance, and turning them off in place is refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from nbcloud.cli.instances_cmd import _given, up
from nbcloud.errors import UsageError
from nbcloud.models import InstanceSpec
from nbcloud.ops.inplace import plan_in_place

SERVER_SIDE = "c.YDocExtension.server_side_execution = True"


def _dry_run(tmp_path: Path, *args: str) -> str:
    env = dict(os.environ, NBCLOUD_HOME=str(tmp_path / "home"), NBCLOUD_QUIET="1",
               NBCLOUD_SANDBOX_DIR=str(tmp_path / "no-sandbox"), NBCLOUD_USER_SSH_CONFIG=str(tmp_path / "ssh"))
    done = subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "up", "x", "--dry-run", *args],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_default_up_renders_the_durable_bootstrap(tmp_path: Path) -> None:
    default = _dry_run(tmp_path)
    assert SERVER_SIDE in default and "jupyter_server_nbmodel==" in default and "jupyter-collaboration==" in default
    classic = _dry_run(tmp_path, "--no-durable-outputs")
    assert SERVER_SIDE not in classic and "jupyter_server_nbmodel==" not in classic


def test_gateway_mode_defaults_to_classic_execution(tmp_path: Path) -> None:
    # a Kernel Gateway holds no documents: `nbcloud lab`'s notebooks live on the laptop
    assert SERVER_SIDE not in _dry_run(tmp_path, "--mode", "gateway")
    assert SERVER_SIDE in _dry_run(tmp_path, "--mode", "gateway", "--durable-outputs")


@pytest.mark.parametrize(("argv", "given"), [
    (["x"], set()),
    (["x", "--durable-outputs"], {"durable_outputs"}),
    (["x", "--no-durable-outputs"], {"durable_outputs"}),
    (["x", "--mode", "gateway"], {"gateway"}),
])
def test_the_default_is_not_given(argv: list[str], given: set[str]) -> None:
    with up.make_context("up", argv) as ctx, ctx.scope():
        assert set(_given()) == given
    assert isinstance(ctx, click.Context)


def test_bare_up_leaves_a_classic_instance_classic() -> None:
    stored = InstanceSpec(name="e", durable_outputs=False)
    wanted = InstanceSpec(name="e", durable_outputs=True)  # what a bare `up e` builds now
    assert plan_in_place(stored, wanted, frozenset(), state="running").changed == ()


def test_turning_durable_outputs_off_in_place_is_refused() -> None:
    stored = InstanceSpec(name="e", durable_outputs=True)
    with pytest.raises(UsageError, match="cannot be turned off in place") as caught:
        plan_in_place(stored, InstanceSpec(name="e"), frozenset({"durable_outputs"}), state="running")
    assert "--no-durable-outputs" in (caught.value.hint or "")
    # not given: the stored value stays, nothing to refuse
    assert plan_in_place(stored, InstanceSpec(name="e"), frozenset(), state="running").changed == ()
