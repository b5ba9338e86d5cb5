"""cloud-init's view of user-data, the parts the sandbox honours (pure functions, no I/O).

User-data may be plain text, gzip-compressed, or MIME multipart (``text/cloud-config`` + ``text/x-shellscript``).
A ``#cloud-config`` document may be YAML or JSON. From cloud-config the sandbox honours ``ssh_keys`` (cloud-init's
``<type>_private``/``<type>_public``) and ``ssh_deletekeys``; every shell script part runs once per instance.
"""

from __future__ import annotations

import base64
import email
import email.policy
import gzip
from dataclasses import dataclass, field
from typing import Any

__all__ = ["UserData", "parse_user_data", "raw_user_data"]

_SCRIPT_TYPES = {"text/x-shellscript", "text/x-shellscript-per-boot", "text/x-shellscript-per-instance"}
_CLOUD_CONFIG_TYPES = {"text/cloud-config", "text/cloud-config-jsonp"}


@dataclass(frozen=True)
class UserData:
    scripts: list[tuple[str, bytes]] = field(default_factory=list)  # (filename, content)
    cloud_config: dict[str, Any] = field(default_factory=dict)

    @property
    def host_keys(self) -> dict[str, tuple[str, str]]:
        """``{"ed25519": (private_pem, public_line), ...}`` from cloud-config ``ssh_keys``."""
        keys = self.cloud_config.get("ssh_keys") or {}
        found: dict[str, tuple[str, str]] = {}
        if not isinstance(keys, dict):
            return found
        for name, private in keys.items():
            if not str(name).endswith("_private"):
                continue
            kind = str(name)[: -len("_private")]
            public = keys.get(f"{kind}_public")
            if kind in {"ed25519", "ecdsa", "rsa"} and isinstance(private, str) and isinstance(public, str):
                found[kind] = (private, public)
        return found

    @property
    def delete_keys(self) -> bool:
        return bool(self.cloud_config.get("ssh_deletekeys", True))


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    return data


def _load_cloud_config(text: str) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"cloud-config is neither YAML nor JSON: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError("cloud-config must be a mapping")
    return loaded


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def parse_user_data(raw: bytes | str | None) -> UserData:
    """Split user-data into the scripts to run and the merged cloud-config."""
    if raw is None:
        return UserData()
    data = _decompress(raw.encode() if isinstance(raw, str) else raw)
    if not data.strip():
        return UserData()
    scripts: list[tuple[str, bytes]] = []
    config: dict[str, Any] = {}
    head = data.lstrip()[:200].lower()
    if head.startswith(b"content-type:") or head.startswith(b"mime-version:") or b"multipart/" in head:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        for index, part in enumerate(message.walk()):
            if part.is_multipart():
                continue
            body = part.get_payload(decode=True)
            payload = _decompress(body if isinstance(body, bytes) else b"")
            ctype = part.get_content_type()
            name = part.get_filename() or f"part-{index:03d}"
            _classify(ctype, name, payload, scripts, config)
        return UserData(scripts=scripts, cloud_config=config)
    _classify("", "part-001", data, scripts, config)
    return UserData(scripts=scripts, cloud_config=config)


def _classify(
    ctype: str, name: str, payload: bytes, scripts: list[tuple[str, bytes]], config: dict[str, Any]
) -> None:
    start = payload.lstrip()[:32]
    if ctype in _CLOUD_CONFIG_TYPES or start.startswith(b"#cloud-config"):
        _merge(config, _load_cloud_config(payload.decode("utf-8", "replace")))
    elif ctype in _SCRIPT_TYPES or start.startswith(b"#!"):
        scripts.append((name.replace("/", "_"), payload))


def raw_user_data(instance: Any) -> bytes | None:
    """The user-data of a moto instance, decoded (None: none given)."""
    data = getattr(instance, "user_data", None)
    if data is None:
        return None
    if isinstance(data, list):
        data = data[0] if data else None
    encoded = getattr(data, "_encoded_string", data)
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded)
    except ValueError:
        return str(encoded).encode()
