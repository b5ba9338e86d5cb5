"""Two `nbcloud sandbox start` at once on one sandbox directory: both answer with the one daemon that runs.

Found trying the sandbox from outside: the second of two concurrent starts failed (exit 2) with "subnet … is used by
another sandbox (the same directory, pid N)" and a line made of the old runs' daemon.log; `start` is idempotent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.sandbox]


def test_concurrent_starts_share_one_daemon(sandbox: Any, tmp_path: Path) -> None:
    from tests.sandbox_fixtures import TEST_SUBNETS

    def start_two(env: dict[str, str]) -> list[subprocess.CompletedProcess[str]]:
        argv = [sys.executable, "-m", "nbcloud.cli.app", "sandbox", "start", "--json"]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        return [subprocess.CompletedProcess(argv, p.wait(timeout=600), *p.communicate()) for p in procs]

    env: dict[str, str] = {}
    try:
        for subnet in [s for s in reversed(TEST_SUBNETS) if s != sandbox.subnet]:  # skip subnets others hold
            env = {**os.environ, "NBCLOUD_SANDBOX_DIR": str(tmp_path / "sbx"), "NBCLOUD_SANDBOX_SUBNET": subnet}
            done = start_two(env)
            if not all("used by another sandbox (/" in d.stdout and str(tmp_path) not in d.stdout for d in done):
                break
        else:
            pytest.skip("every test subnet is held by another sandbox")
        assert [d.returncode for d in done] == [0, 0], [d.stdout + d.stderr for d in done]
        pids = {json.loads(d.stdout)["pid"] for d in done}
        assert len(pids) == 1, pids
    finally:
        if env:
            subprocess.run([sys.executable, "-m", "nbcloud.cli.app", "sandbox", "reset"], env=env,
                           capture_output=True, timeout=120)
