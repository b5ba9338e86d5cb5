"""Rendering of what goes to the instance: bootstrap script, user-data, units, Jupyter config (no network)."""

from __future__ import annotations

import email
import gzip
import json
import subprocess

import pytest
import yaml

from nbcloud.errors import UsageError
from nbcloud.remote import packages
from nbcloud.remote.bootstrap import agent_config, package_hash, render_bootstrap
from nbcloud.remote.jupyter_config import render_jupyter_config
from nbcloud.remote.spec import BootstrapSpec
from nbcloud.remote.units import render_gateway_wrapper, render_units
from nbcloud.remote.userdata import USER_DATA_LIMIT, render_cloud_config, render_user_data

HOST_PRIVATE = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + "b3BlbnNzaC1rZXktdjEAAAAA\n" * 16 + (
    "-----END OPENSSH PRIVATE KEY-----\n"
)
HOST_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBxHostKeyForTests nbcloud-host"


def full_spec(**over: object) -> BootstrapSpec:
    """Every option on, at realistic sizes: the worst case for the 16 KB limit."""
    values: dict[str, object] = dict(
        name="every-option",
        host_key_private=HOST_PRIVATE,
        host_key_public=HOST_PUBLIC,
        gateway=True,
        durable_outputs=True,
        public=True,
        cull_idle_minutes=30,
        idle_stop_seconds=1800,
        max_cost_usd=25.0,
        hourly_usd=1.006,
        python_packages=("pandas>=2.2", "scikit-learn==1.5.2", "matplotlib", "torch[cpu]>=2.3"),
        requirements="\n".join(f"package-number-{i}>=1.{i}" for i in range(40)) + "\n",
        data_volume_id="vol-0123456789abcdef0",
        package_env={
            "NBCLOUD_UV": "/mnt/nbcloud-sandbox/bin/uv",
            "NBCLOUD_PYTHON": "/usr/bin/python3",
            "NBCLOUD_FIND_LINKS": "/mnt/nbcloud-sandbox/wheelhouse",
            "NBCLOUD_NO_INDEX": "1",
            "UV_CACHE_DIR": "/mnt/nbcloud-sandbox/uv-cache",
        },
    )
    values.update(over)
    return BootstrapSpec(**values)  # type: ignore[arg-type]


def bash_syntax_ok(script: str) -> None:
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("spec", [BootstrapSpec(name="plain"), full_spec()], ids=["plain", "every-option"])
def test_bootstrap_is_valid_bash_without_secrets(spec: BootstrapSpec) -> None:
    script = render_bootstrap(spec)
    bash_syntax_ok(script)
    assert script.startswith("#!/bin/bash\n")
    assert "set -Eeuo pipefail" in script
    assert "@@" not in script
    # no private material: the host key travels in cloud-config only, secrets over ssh stdin only
    assert "PRIVATE KEY" not in script
    assert HOST_PRIVATE.splitlines()[1] not in script
    for word in ("JUPYTER_TOKEN=", "--IdentityProvider.token", "KernelGatewayApp.auth_token", "argon2:"):
        assert word not in script


def test_bootstrap_pins_packages_and_env() -> None:
    script = render_bootstrap(full_spec())
    for pin in (*packages.JUPYTER, *packages.DURABLE_OUTPUTS, *packages.GATEWAY):
        assert pin in script
    assert "export NBCLOUD_NO_INDEX=1" in script
    assert "--no-index --find-links" in script
    assert "package-number-39>=1.39" in script  # the requirements file is inlined
    plain = render_bootstrap(BootstrapSpec(name="plain"))
    assert packages.GATEWAY[0] not in plain and packages.DURABLE_OUTPUTS[0] not in plain
    assert "NBCLOUD_NO_INDEX=1" not in plain.split("R=")[0]  # no sandbox env on AWS


def test_package_hash_tracks_the_package_list() -> None:
    base = BootstrapSpec(name="a")
    assert package_hash(base) == package_hash(BootstrapSpec(name="b"))
    assert package_hash(base) != package_hash(BootstrapSpec(name="a", python_packages=("pandas",)))
    assert package_hash(base) != package_hash(BootstrapSpec(name="a", requirements="numpy\n"))


def test_user_data_every_option_fits_and_parses() -> None:
    data = render_user_data(full_spec())
    assert len(data) < USER_DATA_LIMIT
    assert data[:2] == b"\x1f\x8b"
    message = email.message_from_bytes(gzip.decompress(data))
    assert message.get_content_type() == "multipart/mixed"
    parts = [p for p in message.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert all(p["Content-Transfer-Encoding"] == "7bit" for p in parts)  # gzip-friendly, not base64
    config_text = parts[0].get_payload(decode=True).decode()
    assert config_text.startswith("#cloud-config\n")
    config = yaml.safe_load(config_text)
    assert config == json.loads(config_text.split("\n", 1)[1])
    assert config["ssh_keys"] == {"ed25519_private": HOST_PRIVATE, "ed25519_public": HOST_PUBLIC}
    assert config["ssh_deletekeys"] is True
    script = parts[1].get_payload(decode=True).decode()
    assert script == render_bootstrap(full_spec())


def test_user_data_too_large_is_a_usage_error() -> None:
    huge = "".join(f"pkg-{i:05d}-{i * 7919 % 100003:06d}=={i}.{i % 7}\n" for i in range(3000))
    with pytest.raises(UsageError, match="16384"):
        render_user_data(full_spec(requirements=huge))


def test_user_data_matches_the_sandbox_parser() -> None:
    userdata = pytest.importorskip("nbcloud.sandbox.userdata")
    parsed = userdata.parse_user_data(render_user_data(full_spec()))
    assert parsed.host_keys == {"ed25519": (HOST_PRIVATE, HOST_PUBLIC)}
    assert len(parsed.scripts) == 1 and parsed.scripts[0][1].startswith(b"#!/bin/bash")


def test_cloud_config_without_host_key_only_starts_the_bootstrap_early() -> None:
    config = yaml.safe_load(render_cloud_config(BootstrapSpec(name="x")))
    assert list(config) == ["bootcmd"]
    # once per instance (bootcmd runs at every boot), the part cloud-init wrote out, in its `early` mode
    assert config["bootcmd"] == [["cloud-init-per", "instance", "nbcloud-bootstrap-early", "/bin/bash",
                                  "/var/lib/cloud/instance/scripts/nbcloud-bootstrap.sh", "early"]]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "bad name"},
        {"name": "x", "login_user": "Root;rm"},
        {"name": "x", "jupyter_port": 22},
        {"name": "x", "gateway": True, "gateway_port": 8888},
        {"name": "x", "data_volume_id": "vol-XYZ"},
        {"name": "x", "python_packages": ("pandas\nrm -rf /",)},
        {"name": "x", "python_packages": ("$(reboot)",)},
        {"name": "x", "python_packages": ("--index-url=http://evil",)},
        {"name": "x", "python_packages": ("numpy;rm -rf /",)},  # the characters pass; PEP 508 does not
        {"name": "x", "python_packages": ("pandas>=>2",)},
        {"name": "x", "package_env": {"bad key": "v"}},
        {"name": "x", "idle_stop_seconds": 5},
        {"name": "x", "check_period": 60},
    ],
)
def test_spec_rejects_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        BootstrapSpec(**bad)  # type: ignore[arg-type]


def test_spec_takes_pep508_requirements() -> None:
    packages = ("pandas>=2.2", "torch[cpu]>=2.3", "numpy; python_version>'3.8'", "pkg @ https://example.org/p.whl")
    assert BootstrapSpec(name="x", python_packages=packages).python_packages == packages


def test_units_use_only_emulated_keys_and_parse() -> None:
    allowed = {
        "Type", "User", "Group", "WorkingDirectory", "Environment", "EnvironmentFile", "ExecStartPre",
        "ExecStart", "Restart", "RestartSec", "After", "Wants", "StandardOutput", "StandardError",
        "TimeoutStartSec", "Description", "WantedBy", "RemainAfterExit", "Before",
    }
    units = render_units(full_spec())
    assert list(units) == ["nbcloud-imds-guard.service", "nbcloud-data.service", "nbcloud-jupyter.service",
                           "nbcloud-agent.service", "nbcloud-gateway.service"]
    for text in units.values():
        keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
        assert keys <= allowed, keys - allowed
    jupyter = units["nbcloud-jupyter.service"]
    assert "User=ubuntu" in jupyter and "WorkingDirectory=/home/ubuntu" in jupyter
    assert "Environment=JUPYTER_TOKEN_FILE=/home/ubuntu/.config/nbcloud/token" in jupyter
    assert ("ExecStart=/opt/nbcloud/venv/bin/python /opt/nbcloud/bin/jupyter-launch.py "
            "--config=/opt/nbcloud/etc/jupyter_server_config.py") in jupyter
    assert "Restart=always" in jupyter and "RestartSec=1" in jupyter
    assert "StandardOutput=append:/var/log/nbcloud/jupyter.log" in jupyter
    sandbox_units = pytest.importorskip("nbcloud.sandbox.units")
    for name, text in units.items():
        unit = sandbox_units.parse_unit(name, text)
        assert unit.exec_start
    parsed = sandbox_units.parse_unit("j", jupyter)
    assert parsed.user == "ubuntu" and parsed.restart == "always" and not parsed.exec_start_pre  # the launcher waits
    assert parsed.environment["JUPYTER_TOKEN_FILE"].endswith("/token")


def test_gateway_wrapper_reads_token_without_argv() -> None:
    wrapper = render_gateway_wrapper(full_spec())
    bash_syntax_ok(wrapper)
    assert "KG_AUTH_TOKEN" in wrapper and "--JupyterWebsocketPersonality.list_kernels=True" in wrapper
    assert "auth_token" not in wrapper and "cat " not in wrapper  # builtins only: no process sees the token
    assert "--ip=${NBCLOUD_JUPYTER_IP:-127.0.0.1} --port=8889" in wrapper  # 127.0.0.1 unless the machine says


def _listen_ip(config: str, env: dict[str, str]) -> str:
    """c.ServerApp.ip after running the config's lines up to it with ``env`` as the environment."""
    import types
    from unittest import mock

    head = config.split("c.ServerApp.port =")[0]
    c = types.SimpleNamespace(ServerApp=types.SimpleNamespace())
    with mock.patch.dict("os.environ", env, clear=True):
        exec(compile(head, "cfg", "exec"), {"get_config": lambda: c})
    return str(c.ServerApp.ip)


def test_jupyter_config_modes() -> None:
    local = render_jupyter_config(BootstrapSpec(name="x"))
    assert _listen_ip(local, {}) == "127.0.0.1" and "c.ServerApp.port = 8888" in local
    # a machine whose instances share one network (sandbox without root) names the instance's own address
    assert _listen_ip(local, {"NBCLOUD_JUPYTER_IP": "127.9.0.5"}) == "127.9.0.5"
    assert "allow_remote_access" not in local and "certfile" not in local and "cull" not in local
    assert "c.ServerApp.port_retries = 0" in local
    public = render_jupyter_config(full_spec())
    assert "or '0.0.0.0'" in public and "c.ServerApp.allow_remote_access = True" in public
    assert "c.PasswordIdentityProvider.password_required = True" in public
    assert "password.hash" in public and "argon2" not in public
    assert "c.MappingKernelManager.cull_idle_timeout = 1800" in public
    assert "c.MappingKernelManager.cull_busy = False" in public and "cull_connected = False" in public
    assert "c.YDocExtension.server_side_execution = True" in public
    for text in (local, public):
        assert "NotebookApp" not in text and "IPython.lib" not in text and ".token =" not in text
        compile(text, "jupyter_server_config.py", "exec")


def test_agent_config_points_at_the_server() -> None:
    assert agent_config(BootstrapSpec(name="x"))["jupyter_url"] == "http://127.0.0.1:8888"
    assert agent_config(full_spec())["jupyter_url"] == "https://127.0.0.1:8888"


def test_agent_ships_without_docs_but_with_all_its_code() -> None:
    import ast
    from pathlib import Path

    from nbcloud.remote import bootstrap

    full = (Path(bootstrap.__file__).parent / "agent" / "nbcloud_agent.py").read_text()
    shipped = bootstrap.agent_source()
    assert shipped.startswith("#!/usr/bin/env python3\n") and len(shipped) < 0.85 * len(full)

    def names(text: str) -> set[str]:
        return {n.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef | ast.ClassDef)}

    assert names(shipped) == names(full)
    assert '"""' not in shipped.split("\n", 3)[1]  # the module docstring is gone


@pytest.mark.parametrize("finished", ["0", "3"])
def test_the_final_stage_takes_the_early_units_result_when_it_ends_between_two_looks(tmp_path, finished) -> None:
    """The early unit may end (and, transient, be unloaded) right after the final stage looked for its status file:
    the final stage must take that status, not decide the unit never ran and run every step a second time."""
    script = render_bootstrap(BootstrapSpec(name="plain"))
    wait_early = script[script.index("wait_early() {"):script.index('case "${1:-all}" in')]
    status, mark = tmp_path / "status", tmp_path / "mark"
    mark.touch()
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    # the unit ends while the first systemctl call runs: its status file appears and it is unloaded
    fake.write_text(f"#!/bin/sh\n[ -e {status} ] || echo {finished} > {status}\n"
                    "case \"$*\" in *LoadState*) echo not-found;; *) echo inactive;; esac\n")
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", "-c", f"EARLY_STATUS={status}; EARLY_MARK={mark}\n{wait_early}\nwait_early; echo rc=$?"],
        capture_output=True, text=True, env={"PATH": f"{fake.parent}:/usr/bin:/bin"})
    assert result.stdout.strip() == f"rc={finished}", result
    assert not mark.exists()
