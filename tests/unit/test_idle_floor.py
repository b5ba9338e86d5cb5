"""The idle stop's floor: 60 s for users, lowered (never below 20 s) only by the hidden knob the slow tests use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbcloud.errors import UsageError
from nbcloud.ops.agent import IDLE_FLOOR_ENV, idle_stop_floor
from nbcloud.remote.agent.nbcloud_agent import Settings, load_config, load_settings
from nbcloud.remote.bootstrap import agent_config
from nbcloud.remote.secrets import autostop_update_script
from nbcloud.remote.spec import IDLE_STOP_FLOOR, BootstrapSpec


def test_users_get_the_60_second_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IDLE_FLOOR_ENV, raising=False)
    assert idle_stop_floor() == IDLE_STOP_FLOOR == 60
    with pytest.raises(UsageError, match="at least 60 s"):
        BootstrapSpec(name="x", idle_stop_seconds=30)
    with pytest.raises(UsageError, match="at least 60 s"):
        autostop_update_script(30)


@pytest.mark.parametrize("text", ["19", "61", "abc", "-5", "30.5"])
def test_the_knob_refuses_what_is_outside_20_to_60(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(IDLE_FLOOR_ENV, text)
    with pytest.raises(UsageError, match=IDLE_FLOOR_ENV):
        idle_stop_floor()


def test_a_lowered_floor_reaches_the_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(IDLE_FLOOR_ENV, "30")
    spec = BootstrapSpec(name="x", idle_stop_seconds=30, idle_floor=idle_stop_floor())
    config_file = tmp_path / "agent-config.json"
    config_file.write_text(json.dumps(agent_config(spec)))
    config = load_config(str(config_file))
    assert config.idle_floor == 30
    settings_file = tmp_path / "agent.json"
    settings_file.write_text(json.dumps({"idle_stop_seconds": 25}))
    # the agent clamps a too-short setting to its own floor, whatever wrote the file
    assert load_settings(str(settings_file), Settings(), config.idle_floor).idle_stop_seconds == 30
    assert load_settings(str(settings_file), Settings()).idle_stop_seconds == 60
    assert "30" in autostop_update_script(30, floor=30)
    with pytest.raises(UsageError):
        BootstrapSpec(name="x", idle_floor=10)


def test_one_idle_default_everywhere() -> None:
    """The default idle limit is written once (remote.spec); the settings' text, the spec's and the agent's own
    copy (it imports nothing from nbcloud) all say the same."""
    from nbcloud.config import Settings as UserSettings
    from nbcloud.models import InstanceSpec, parse_duration
    from nbcloud.remote.spec import IDLE_STOP_DEFAULT

    assert parse_duration(UserSettings().idle_stop) == IDLE_STOP_DEFAULT
    assert InstanceSpec.__dataclass_fields__["idle_stop_seconds"].default == IDLE_STOP_DEFAULT
    assert BootstrapSpec.__dataclass_fields__["idle_stop_seconds"].default == IDLE_STOP_DEFAULT
    assert Settings.__dataclass_fields__["idle_stop_seconds"].default == IDLE_STOP_DEFAULT  # the agent's
