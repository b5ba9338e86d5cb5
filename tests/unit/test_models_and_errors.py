from __future__ import annotations

import pytest

from nbcloud.errors import CapacityError, CredentialsError, NbcloudError, QuotaError, RemoteError, UsageError
from nbcloud.models import parse_duration, validate_name
from nbcloud.ops.launch import parse_data_volume
from nbcloud.providers.aws.session import classify


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400),
                                               ("45", 2700), ("1.5h", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["off", "OFF", "none", "0"])
def test_duration_off(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["soon", "5x", "10s", "-3m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("name", ["demo", "a", "gpu-box-2"])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["Demo", "1box", "a_b", "", "x" * 41, "nb demo"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)


def test_data_volume_forms() -> None:
    assert parse_data_volume(None, "demo") is None
    assert parse_data_volume("100", "demo") == ("demo", 100)
    assert parse_data_volume("proj", "demo") == ("proj", 50)
    assert parse_data_volume("proj:200", "demo") == ("proj", 200)
    with pytest.raises(UsageError):
        parse_data_volume("Proj:x", "demo")


@pytest.mark.parametrize(("code", "kind"), [
    ("InsufficientInstanceCapacity", CapacityError),
    ("VcpuLimitExceeded", QuotaError),
    ("AuthFailure", CredentialsError),
    ("UnauthorizedOperation", CredentialsError),
    ("InvalidAMIID.NotFound", UsageError),
    ("InvalidParameterValue", UsageError),
    ("RequestLimitExceeded", RemoteError),
    ("SomethingNew", RemoteError),
])
def test_classify(code: str, kind: type[NbcloudError]) -> None:
    error = classify(code, "msg", "RunInstances")
    assert type(error) is kind
    assert error.hint, "every classified error carries a fix"


def test_quota_hint_names_where_to_raise() -> None:
    assert "Service Quotas" in classify("VcpuLimitExceeded", "x").hint


def test_one_line_and_exit_codes() -> None:
    error = UsageError("bad\nthing", "do  this")
    assert error.one_line() == "error: bad thing — do this"
    assert error.exit_code == 2 and RemoteError("x").exit_code == 1
    assert error.to_json() == {"type": "UsageError", "message": "bad\nthing", "hint": "do  this"}
