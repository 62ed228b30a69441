"""diffii_core.atomic: a target is either its old bytes or its whole new bytes, and no temp file stays."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffii_core.atomic import atomic_path, atomic_write


def test_a_clean_block_replaces_the_target_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.zip"  # the folder does not exist yet
    with atomic_write(target) as handle:
        handle.write(b"new")
        assert not target.exists()  # nothing at the name until the block ends
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.zip"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_block_keeps_the_old_bytes_and_removes_its_temp_file(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "out.zip"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, durable=durable) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.zip"]


def test_temp_files_go_to_the_given_folder(tmp_path: Path) -> None:
    scratch = tmp_path / ".tmp"
    target = tmp_path / "objects" / "key"
    with atomic_path(target, tmp_dir=scratch) as tmp:
        assert tmp.parent == scratch and tmp.exists()
        tmp.write_bytes(b"written by any means")
    assert target.read_bytes() == b"written by any means"
    assert list(scratch.iterdir()) == []


def test_a_block_that_writes_nothing_to_its_path_still_replaces_with_empty(tmp_path: Path) -> None:
    # The temp file exists from the start, so a writer that produced no bytes gives an empty file,
    # not a missing one (the caller decided the empty result is the result).
    target = tmp_path / "empty"
    with atomic_path(target):
        pass
    assert target.read_bytes() == b""
