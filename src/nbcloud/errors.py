"""One exception tree for everything nbcloud reports to a user.

Every error says what happened (the message) and what to do about it (the hint). The CLI prints
``error: <message> — <hint>`` on one line and exits with ``exit_code``, one rule for every command: 2 for bad
input or usage (a wrong value, missing credentials, a busy port, a request that contradicts what exists), 1 for a
failure of the cloud or the remote machine (no capacity, a quota reached, a host key that does not match, a tunnel
that will not come up, an operation that failed after it was accepted); an interrupt exits 130.
Third-party exceptions (botocore, OSError, subprocess) are mapped to these at the boundary that raised them.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "ConflictError",
    "CredentialsError",
    "HostKeyError",
    "Interrupted",
    "NbcloudError",
    "NotFoundError",
    "QuotaError",
    "RemoteError",
    "SandboxError",
    "TunnelError",
    "UsageError",
]


class NbcloudError(Exception):
    """Base of every error nbcloud reports; carries the fix as ``hint``."""

    exit_code = 2
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    @property
    def kind(self) -> str:
        return type(self).__name__

    def one_line(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f" — {self.hint}"
        return " ".join(text.split())

    def to_json(self) -> dict[str, str]:
        return {"type": self.kind, "message": self.message, "hint": self.hint}


class UsageError(NbcloudError):
    """Bad input: a wrong flag value, an unknown instance type, region or image, a busy port."""

    default_hint = "see `nbcloud --help`"


class CredentialsError(NbcloudError):
    default_hint = (
        "configure AWS credentials (`aws configure`, `aws sso login --profile P` then `--profile P`, "
        "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), or try nbcloud without an account: `--provider sandbox`"
    )


class CapacityError(NbcloudError):
    """The cloud has no room for the request (after failover): not the user's input, so exit 1."""

    exit_code = 1
    default_hint = ("retry in a few minutes (EC2's capacity changes often); a new instance may also use other types: "
                    "`up --fallback-types T1,T2`")


class QuotaError(NbcloudError):
    exit_code = 1
    default_hint = (
        "raise the quota in the Service Quotas console (EC2 > Running On-Demand instances, vCPU based) "
        "or pick a smaller instance type"
    )


class NotFoundError(NbcloudError):
    default_hint = "`nbcloud status` lists the instances nbcloud knows"


class ConflictError(NbcloudError):
    """The request contradicts what exists (a name in use, an instance in the wrong state)."""


class RemoteError(NbcloudError):
    """An operation failed on the instance or in the cloud after it was accepted."""

    exit_code = 1


class HostKeyError(RemoteError):
    """The remote presented a host key other than the pinned one: a security failure of the remote, exit 1 from
    every command (`up`, `start`, `connect`, `ssh`-based ones alike)."""

    default_hint = ("someone may be intercepting the connection, or the instance was replaced; if you replaced it, "
                    "run `nbcloud down` and `nbcloud up` again")


class TunnelError(NbcloudError):
    exit_code = 1  # the link or the remote end failed (a busy local port is a UsageError, raised before)
    default_hint = "`nbcloud status NAME` shows the tunnel; its log is under the nbcloud data directory"


class SandboxError(NbcloudError):
    default_hint = "`nbcloud sandbox status` shows the sandbox; `nbcloud sandbox reset` starts it afresh"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) during an operation that checked what it left: says what was rolled back.

    A KeyboardInterrupt, so ``except Exception`` never swallows it; the CLI renders it like an error, exit 130.
    """

    exit_code = 130

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def as_error(self) -> NbcloudError:
        error = NbcloudError(self.message, self.hint)
        error.exit_code = self.exit_code
        return error
