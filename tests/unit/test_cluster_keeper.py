"""The spot keeper's lifetime on this machine: a real keeper process ends itself once its cluster is gone, and
`stop_keeper` never signals a process that is not a keeper (no cloud is needed for either)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import wait_until

from nbcloud.ops import Context
from nbcloud.ops.cluster import cluster_dir
from nbcloud.ops.keeper_process import _is_keeper, keeper_view, start_keeper, stop_keeper


def test_a_keeper_without_its_cluster_ends_itself_and_status_says_why(nbcloud_home: Path) -> None:
    ctx = Context.create()
    cluster_dir(ctx, "k").mkdir(parents=True)  # the files of a cluster that `cluster down` is removing
    pid = start_keeper(ctx, "k")
    wait_until(lambda: not _is_keeper(pid, "k"), 30, what="the keeper to end itself")
    view = keeper_view(ctx, "k")
    assert view is not None and view["state"] == "stopped" and view["reason"] == "the cluster is gone"


def test_stop_keeper_never_signals_a_pid_that_is_not_the_keeper(nbcloud_home: Path) -> None:
    ctx = Context.create()
    d = cluster_dir(ctx, "k2")
    d.mkdir(parents=True)
    # a stale state file whose pid now belongs to another process (here: this test's own)
    (d / "keeper.json").write_text(json.dumps({"pid": os.getpid(), "state": "watching"}))
    assert stop_keeper(ctx, "k2") is False
    view = keeper_view(ctx, "k2")
    assert view is not None and view["state"] == "stopped" and "not running" in view["reason"]
