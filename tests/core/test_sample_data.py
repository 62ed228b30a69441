"""diffii_core.sample_data: layout, determinism, archives, and the command line."""

from __future__ import annotations

import io
import tarfile
import unicodedata
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from diffii_core.dataset import load_dataset
from diffii_core.sample_data import main, sample_images, write_sample_archive, write_sample_dataset

EXPECTED_COUNTS = {"circle": 4, "square": 4, "triangle dé": 3, "星 star": 1}


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_classes_counts_and_image_size(tmp_path: Path) -> None:
    root = write_sample_dataset(tmp_path / "sample")
    assert root == tmp_path / "sample"

    counts = {d.name: len(list(d.iterdir())) for d in root.iterdir()}
    assert counts == EXPECTED_COUNTS
    assert min(counts.values()) == 1  # the single-image class
    assert all(unicodedata.is_normalized("NFC", name) for name in counts)
    for rel in files_of(root):
        with Image.open(root / rel) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))


def test_the_sample_loads_as_a_dataset(tmp_path: Path) -> None:
    ds = load_dataset(write_sample_dataset(tmp_path / "sample"))
    assert {c.name: len(c.images) for c in ds.classes} == EXPECTED_COUNTS
    assert ds.class_names() == sorted(EXPECTED_COUNTS)
    assert ds.skipped == []


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = files_of(write_sample_dataset(tmp_path / "a", seed=7))
    again = files_of(write_sample_dataset(tmp_path / "b", seed=7))
    other = files_of(write_sample_dataset(tmp_path / "c", seed=8))

    assert first == again
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_images_vary_within_a_class() -> None:
    pngs = [png for name, _rel, png in sample_images(0) if name == "circle"]
    assert len(set(pngs)) == len(pngs) == 4
    colours = {Image.open(io.BytesIO(p)).getpixel((0, 0)) for p in pngs}
    assert len(colours) > 1  # backgrounds differ, not just positions


def test_a_negative_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="seed must be >= 0"):
        sample_images(-1)


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_archives_are_byte_identical_and_hold_the_same_images(tmp_path: Path, fmt: str) -> None:
    first = write_sample_archive(tmp_path / f"one.{fmt}", fmt, seed=3)
    second = write_sample_archive(tmp_path / "elsewhere" / f"two.{fmt}", fmt, seed=3)
    assert first.read_bytes() == second.read_bytes()

    folder = files_of(write_sample_dataset(tmp_path / "folder", seed=3))
    ds = load_dataset(first)
    assert {i.path: i.data for c in ds.classes for i in c.images} == folder


def test_archive_metadata_carries_no_clock(tmp_path: Path) -> None:
    with zipfile.ZipFile(write_sample_archive(tmp_path / "s.zip", "zip")) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert "triangle dé/" in zf.namelist()
    gz = write_sample_archive(tmp_path / "s.tar.gz", "tar.gz")
    assert gz.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime
    with tarfile.open(gz) as tf:
        members = tf.getmembers()
        assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}
        assert "星 star/000.png" in tf.getnames()


def test_an_unknown_archive_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"archive format must be one of zip, tar, tar\.gz"):
        write_sample_archive(tmp_path / "s.7z", "7z")  # type: ignore[arg-type]


def test_command_line_writes_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "out"), "--seed", "5"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out")
    assert files_of(tmp_path / "out") == files_of(write_sample_dataset(tmp_path / "ref", seed=5))


@pytest.mark.parametrize("fmt", ["zip", "tar", "tar.gz"])
def test_command_line_writes_an_archive(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    assert main([str(tmp_path / "out"), "--archive", fmt]) == 0
    written = tmp_path / "out" / f"sample.{fmt}"
    assert capsys.readouterr().out.strip() == str(written)
    assert written.read_bytes() == write_sample_archive(tmp_path / f"ref.{fmt}", fmt).read_bytes()


def test_command_line_rejects_a_bad_format(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main([str(tmp_path / "out"), "--archive", "rar"])
    assert caught.value.code == 2
    assert not (tmp_path / "out").exists()
