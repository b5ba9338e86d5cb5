"""Waiting for SSH gives up at once when ssh's own configuration is broken (exit 255, as for a host not up yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbcloud.errors import UsageError
from nbcloud.ssh import session


@pytest.mark.parametrize("text", ["Host nb-x\n  HostName 127.0.0.1\n  NoSuchOption yes\n", "Include {self}\n"])
def test_a_broken_ssh_config_is_a_usage_error_not_a_wait(tmp_path: Path, text: str) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(text.format(self=config))
    # the old code retried until the timeout, then blamed the instance ("did not accept SSH within 3 s")
    with pytest.raises(UsageError, match="configuration is broken"):
        session.wait_ssh(config, "nb-x", timeout=3)
