"""os mode's volume files (sandbox/ebs.py): sparse at the volume's size, grown with the volume, never shrunk."""

from __future__ import annotations

from pathlib import Path

from nbcloud.sandbox.ebs import GIB, backing_file


def test_a_volume_file_is_sparse_at_its_size_and_grows_without_losing_data(tmp_path: Path) -> None:
    path = backing_file(tmp_path / "vol-1", 1)
    assert path.stat().st_size == GIB
    assert path.stat().st_blocks * 512 < 1 << 20  # sparse: a blank 1 GiB volume takes no room
    with open(path, "r+b") as handle:
        handle.write(b"superblock")
    assert backing_file(tmp_path / "vol-1", 2).stat().st_size == 2 * GIB  # a volume made bigger from a snapshot
    assert backing_file(tmp_path / "vol-1", 1).stat().st_size == 2 * GIB  # never shrunk
    with open(path, "rb") as handle:
        assert handle.read(10) == b"superblock"
