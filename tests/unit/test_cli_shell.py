"""The CLI shell: cheap --help, one-line errors with exit 2, JSON errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def nb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nbcloud.cli.app", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_help_imports_no_cloud_or_jupyter_library() -> None:
    code = ("import sys; from nbcloud.cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('boto3', 'botocore', 'moto', 'asyncssh', 'jupyter_server', 'jupyter_client', 'rich')"
            " if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out


def test_every_listed_command_loads() -> None:
    import click

    from nbcloud.cli.app import COMMANDS, SHORT_HELP, cli

    ctx = click.Context(cli)
    for name in SHORT_HELP:
        assert name in COMMANDS
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert command.name == name


HUGE = "9" * 40  # found from outside: each of these was taken, or failed with a traceback


@pytest.mark.parametrize("argv", [["up", "Bad_Name"], ["status", "--bogus"], ["up", "x", "--disk", "2"],
                                  ["up", "x", "--idle-stop", "soon"]])
def test_bad_input_is_one_line_exit_2(argv: list[str], nbcloud_home) -> None:
    done = nb(*argv)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("argv", "said"), [
    (["up", "x", "--provider", "sandbox", "--dry-run", "--idle-stop", HUGE + "m"], "is too long"),
    (["autostop", "x", HUGE + "m"], "is too long"),  # refused before the instance is looked up
    (["cluster", "up", "x", "--workers", HUGE], "--workers must be 1 to "),  # it launched workers until killed
    (["cluster", "scale", "x", HUGE], "0 to "),
    (["prices", "refresh", "--region", ""], "unknown AWS region ''"),  # a botocore traceback
    (["prices", "refresh", "--region", "mars-1"], "unknown AWS region 'mars-1'")])
def test_values_past_any_sense_are_refused_in_one_line(argv: list[str], said: str, nbcloud_home) -> None:
    done = nb(*argv)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], done.stderr


def test_json_error_document(nbcloud_home) -> None:
    done = nb("up", "Bad_Name", "--json")
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert set(doc["error"]) == {"type", "message", "hint"}
    assert doc["error"]["type"] == "UsageError"


def test_no_credentials_is_one_line(nbcloud_home, tmp_path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
               NBCLOUD_HOME=os.environ["NBCLOUD_HOME"])
    done = nb("up", "demo", "--no-connect", env=env)
    assert done.returncode == 2, done
    assert "credentials" in done.stderr and "--provider sandbox" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_region_is_one_line(nbcloud_home) -> None:
    done = nb("up", "demo", "--region", "us-esat-1", "--no-connect")
    assert done.returncode == 2
    assert "unknown AWS region 'us-esat-1'" in done.stderr and "did you mean" in done.stderr


@pytest.mark.parametrize("argv", [[], ["prices"], ["image"], ["sandbox"]])
def test_a_bare_group_prints_its_help(argv: list[str], nbcloud_home) -> None:
    done = nb(*argv)
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"Usage: nbcloud {' '.join(argv)}".rstrip() + " [OPTIONS] COMMAND"), done.stdout
    assert "\nCommands:\n" in done.stdout and len(done.stdout.splitlines()) > 5
    assert "error" not in done.stderr


@pytest.mark.parametrize("since", ["10s", "-1d", "off", "soon", "9" * 40 + "d"])
def test_cost_since_errors_speak_of_since(since: str, nbcloud_home) -> None:
    """Found from outside: `cost --since 10s` said "use at least 30s" and `--since -1d` suggested "off", the idle
    limit's words, neither of which `--since` takes."""
    done = nb("cost", "--since", since)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid --since {since!r} — "), done.stderr
    assert "30s" not in lines[0] and "off" not in lines[0].split(" — ")[1], lines[0]


@pytest.mark.parametrize(("seconds", "shown"), [(60, "1m"), (90, "90s"), (7200, "2h"), (2700, "45m"), (None, None)])
def test_autostop_says_the_limit_it_set(seconds: int | None, shown: str | None) -> None:
    """Found from outside: `nbcloud autostop demo 1` (a bare number is minutes) answered "stops after 1 idle"."""
    from nbcloud.cli.cost_cmd import autostop_text

    text = autostop_text({"name": "demo", "idle_stop": "1", "idle_stop_seconds": seconds})
    assert text == (f"demo: stops after {shown} idle" if shown else "demo: autostop off")


def test_text_output_drops_control_characters(capsys) -> None:
    """What the instance says (an agent's reason, a hold's reason) reaches the terminal without escape sequences."""
    from nbcloud.cli.output import emit
    from nbcloud.remote.secrets import hold_reason

    emit({}, False, "demo: held (\x1b[2J\x1b]0;pwned\x07 training)\tnext\nline")
    assert capsys.readouterr().out == "demo: held ([2J]0;pwned training)\tnext\nline\n"
    assert hold_reason("a\x1b[31m red\x00 \n reason") == "a[31m red reason"


@pytest.mark.parametrize("command", ["stop", "start", "down"])
def test_an_unknown_name_is_one_line_even_with_progress_on(command: str, nbcloud_home, monkeypatch) -> None:
    """Progress is on (no NBCLOUD_QUIET, stderr not a terminal): its heading goes out with the first step only, so a
    command refused before any step prints its error line and nothing else (it printed "nbcloud stop x …" first)."""
    import os

    monkeypatch.delenv("NBCLOUD_QUIET")
    done = nb(command, "nosuch", env=dict(os.environ))
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "error: no instance named 'nosuch' on this machine — `nbcloud status` lists them; `nbcloud up NAME` makes one"]


@pytest.mark.parametrize("tag", ["k=" + "v" * 257, "k" * 129 + "=v"])
def test_a_tag_past_ec2s_limits_is_refused_before_anything_is_made(tag: str, nbcloud_home) -> None:
    import os

    done = nb("up", "x", "--provider", "sandbox", "--dry-run", "--tag", tag, env=dict(os.environ))
    assert done.returncode == 2 and "EC2's limits" in done.stderr and len(done.stderr.splitlines()) == 1, done


@pytest.mark.parametrize("argv, says", [
    (["prices", "show", "--region", "mars-1"], "no prices for region 'mars-1'"),
    (["sandbox", "fault-api", "Bogus", "SomeCode"], "'Bogus' is not an EC2 or SSM API operation"),
    (["image", "bake", "x", "--image-name", ""], "invalid image name ''"),
])
def test_inputs_that_did_nothing_silently_are_refused(argv: list[str], says: str, nbcloud_home) -> None:
    """Each was taken with exit 0 (nothing listed; a fault that could never fire; the instance's name used instead)."""
    import os

    done = nb(*argv, env=dict(os.environ))
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.splitlines()) == 1, done
