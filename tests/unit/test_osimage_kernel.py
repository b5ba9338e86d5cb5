"""The os image's kernel variant (the QEMU smoke test's VM) is built beside the container image, never into it."""

from __future__ import annotations

from pathlib import Path


def test_kernel_variant_has_its_own_directory_and_only_it_gets_the_vm_config(tmp_path: Path) -> None:
    from nbcloud.sandbox.osimage import KERNEL_PACKAGES, _hook_script, _vm_hook, image_path

    assert image_path(kernel=True) != image_path() and image_path(kernel=True).parent == image_path().parent
    assert not image_path().name.endswith("-kernel")
    cfg = tmp_path / "cfg"
    script = tmp_path / "cloud-init"
    plain, vm = _hook_script(cfg, script), _hook_script(cfg, script, _vm_hook(tmp_path))
    assert vm.startswith(plain)  # the container image's hook, then the VM's lines
    for line in ("70-nbcloud-ebs-name.rules", "systemctl enable systemd-networkd", "vmlinuz-"):
        assert line in vm and line not in plain
    rule = (tmp_path / "70-nbcloud-ebs-name.rules").read_text()
    # the name bootstrap.sh waits for, from the serial (vol + the id's hex digits) of a QEMU NVMe disk
    assert 'SYMLINK+="disk/by-id/nvme-Amazon_Elastic_Block_Store_$env{ID_SERIAL_SHORT}"' in rule
    assert 'ENV{ID_MODEL}=="QEMU NVMe Ctrl"' in rule
    assert "linux-image-cloud-amd64" in KERNEL_PACKAGES and "udev" in KERNEL_PACKAGES
