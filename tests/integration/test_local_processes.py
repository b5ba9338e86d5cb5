"""Issue 14 #7 on a sandbox of its own: an instance's local processes (the tunnel, a local `nbcloud lab`) end with
it, and nothing starts a sandbox again from the background.

`down NAME` stops NAME's tunnel and leaves another instance's lab alone; `sandbox reset` stops the tunnels and labs
of every instance it removes and forgets them; afterwards no daemon comes back and `status` starts none. The sandbox
is a second one (reset ends it), on a subnet of NBCLOUD_TEST_SANDBOX_SUBNET that the session's does not hold.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import World, wait_until

pytestmark = [pytest.mark.sandbox, pytest.mark.slow, pytest.mark.timeout(600)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _supervisor_pid(world: World, name: str) -> int:
    import json

    return int(json.loads((world.home / "tunnels" / f"{name}.json").read_text())["pid"])


def test_down_and_reset_stop_tunnels_and_labs_and_nothing_restarts(sandbox: Any, tmp_path: Path) -> None:
    from tests.sandbox_fixtures import TEST_SUBNETS, start_on_a_free_subnet

    from nbcloud.sandbox import client

    wanted = [s.strip() for s in os.environ.get("NBCLOUD_TEST_SANDBOX_SUBNET", "").split(",") if s.strip()]
    subnets = tuple(s for s in (wanted or TEST_SUBNETS) if s != sandbox.subnet)
    directory = tmp_path / "sbx"
    own = start_on_a_free_subnet(directory, subnets)
    world = World.under(tmp_path / "w", own)
    world.env.pop("NBCLOUD_SANDBOX_SUBNET", None)
    try:
        world.up("lp1", "--mode", "gateway", "--idle-stop", "off")
        world.up("lp2", "--idle-stop", "off")
        notebooks = tmp_path / "notebooks"
        notebooks.mkdir()
        lab = world.nb_json("lab", "lp1", str(notebooks), "--no-browser")["pid"]
        world.nb_json("connect", "lp2", "--no-browser")
        tunnels = {name: _supervisor_pid(world, name) for name in ("lp1", "lp2")}
        assert all(_alive(pid) for pid in (lab, *tunnels.values()))

        world.nb("down", "lp2")
        world.names.discard("lp2")
        wait_until(lambda: not _alive(tunnels["lp2"]), 20, what="lp2's tunnel ended with `down lp2`")
        assert _alive(lab) and _alive(tunnels["lp1"]), "`down lp2` stopped another instance's processes"

        reset = world.nb("sandbox", "reset")
        assert "stopped the tunnels and labs of lp1" in reset.stdout, reset.stdout
        wait_until(lambda: not _alive(lab) and not _alive(tunnels["lp1"]), 20,
                   what="lp1's lab and tunnel ended with `sandbox reset`")
        world.names.clear()
        assert world.nb_json("status") == []
        # a tunnel's resolver runs every few seconds: give a background process the time to start one
        time.sleep(15)
        assert not client.status(directory)["running"], "something started the sandbox again"
        assert world.nb_json("status") == [] and not client.status(directory)["running"]
    finally:
        world.down_all()
        client.reset(directory)
