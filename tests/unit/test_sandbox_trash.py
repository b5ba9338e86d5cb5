"""The sandbox's trash: a discarded directory is gone from its place at once and deleted in the background."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import wait_until

from nbcloud.sandbox.storage import Trash


def test_discard_moves_at_once_and_deletes_later(tmp_path: Path) -> None:
    trash = Trash(tmp_path / "trash")
    disk = tmp_path / "instances" / "i-1"
    (disk / "root" / "opt").mkdir(parents=True)
    for n in range(200):
        (disk / "root" / "opt" / f"f{n}").write_text("x")
    trash.discard(disk)
    assert not disk.exists() and (tmp_path / "instances").is_dir()
    wait_until(lambda: not any((tmp_path / "trash").iterdir()), 30, what="the trash emptied")
    trash.discard(tmp_path / "never-there")  # nothing to do, no error
