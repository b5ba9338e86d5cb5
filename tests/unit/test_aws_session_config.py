"""Issue 18: AWS profiles, SSO and regions resolved the way the AWS CLI and SDKs resolve them (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbcloud.errors import CredentialsError, UsageError
from nbcloud.providers.aws.session import AwsSession, choose_region

CONFIG = """[profile eu]
region = eu-central-1
[profile sso]
sso_start_url = https://example.invalid/start
sso_region = us-east-1
sso_account_id = 123456789012
sso_role_name = Reader
region = us-east-1
[profile keys]
region = eu-west-3
"""


@pytest.fixture
def aws_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ~/.aws of our own: no real profile, no credentials, no instance metadata lookup (no network)."""
    (tmp_path / "config").write_text(CONFIG)
    (tmp_path / "credentials").write_text("[keys]\naws_access_key_id = AKIATEST\naws_secret_access_key = x\n")
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(tmp_path))  # the SSO token cache (~/.aws/sso/cache) is empty
    return tmp_path


def test_unknown_profile_from_the_environment_is_named(aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(CredentialsError) as caught:
        AwsSession.create()
    assert "'nope'" in caught.value.message and "None" not in caught.value.message
    with pytest.raises(CredentialsError, match="'other'"):
        AwsSession.create(profile="other")


def test_sso_profile_without_login_names_the_profile_in_the_hint(aws_home: Path) -> None:
    session = AwsSession.create(profile="sso", endpoint_url="http://127.0.0.1:9")  # never reached
    with pytest.raises(CredentialsError) as caught:
        session.call("ec2", "describe_availability_zones")
    assert "aws sso login --profile sso" in caught.value.hint
    assert "<profile>" not in caught.value.one_line()


@pytest.mark.parametrize(("env", "profile", "expected"), [
    ({"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "eu-west-1"}, None, "us-east-1"),
    ({"AWS_REGION": "us-west-2"}, "eu", "us-west-2"),
    ({"AWS_DEFAULT_REGION": "eu-west-1"}, "eu", "eu-west-1"),
    ({}, "eu", "eu-central-1"),
])
def test_region_order_is_the_sdks(aws_home: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                  profile: str | None, expected: str) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if profile is None:
        monkeypatch.setenv("AWS_PROFILE", "keys")
    assert AwsSession.create(profile=profile).region == expected
    assert AwsSession.create(profile=profile, region="ap-south-1").region == "ap-south-1", "the flag wins"


def test_choose_region_is_pure() -> None:
    assert choose_region(None, {"AWS_REGION": "a", "AWS_DEFAULT_REGION": "b"}, "c") == "a"
    assert choose_region(None, {"AWS_DEFAULT_REGION": "b"}, "c") == "b"
    assert choose_region("f", {"AWS_REGION": "a"}, "c") == "f"
    assert choose_region(None, {}, None) is None


def test_no_region_and_no_credentials_says_credentials_first(aws_home: Path) -> None:
    with pytest.raises(CredentialsError) as caught:
        AwsSession.create()
    line = caught.value.one_line()
    assert "credentials" in caught.value.message and "--provider sandbox" in line and "aws configure" in line


def test_credentials_but_no_region_asks_for_a_region(aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    with pytest.raises(UsageError) as caught:
        AwsSession.create()
    assert "region" in caught.value.message and "--region" in caught.value.hint


def test_cli_without_aws_setup_points_a_new_user_at_credentials_or_the_sandbox(
        aws_home: Path, nbcloud_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from tests.helpers import run_cli

    env = {k: v for k, v in os.environ.items() if k not in ("NBCLOUD_PROVIDER", "NBCLOUD_REGION")}
    done = run_cli(env, "up", "x", "--no-connect", check=False, timeout=120)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "credentials" in line and "--provider sandbox" in line, line
