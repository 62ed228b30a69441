"""`diffii augment` end to end on the bundled sample data, as a user runs it (a real subprocess)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

FAST = ["--concept-steps", "4", "--inference-steps", "6", "--inversion-steps", "6", "--seed", "11"]


def run_cli(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def archive(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "synthetic.zip"
    done = run_cli("augment", sample_dir, "--out", out, "--expansion", "1.5", "--batch-size", "3", *FAST)
    assert "images for 4 classes" in done.stdout
    return out


def test_archive_has_int_expansion_times_n_images_per_class_and_full_metadata(archive, sample):
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        lines = [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]
        job = json.loads(zf.read("job.json"))
        for cls in sample.classes:
            pngs = [n for n in names if n.startswith(f"{cls.name}/") and n.endswith(".png")]
            assert len(pngs) == int(1.5 * len(cls.images))
            assert Image.open(io.BytesIO(zf.read(pngs[0]))).size == (64, 64)
    assert sorted(line["file_name"] for line in lines) == sorted(n for n in names if n.endswith(".png"))
    assert names[-3:] == ["preview.html", "metadata.jsonl", "job.json"]  # the writer's order
    fields = {
        "file_name",
        "label",
        "label_index",
        "method",
        "seed",
        "sources",
        "phi",
        "suffix",
        "split_ratio",
    }
    assert all(fields <= set(line) for line in lines)
    index = job["class_index"]
    assert index == {c.name: c.index for c in sample.classes}
    assert all(index[line["label"]] == line["label_index"] for line in lines)
    single = next(c for c in sample.classes if len(c.images) == 1)
    assert {line["init"] for line in lines if line["label"] == single.name} == {"noise"}
    assert job["params"]["seed"] == 11 and job["model"]["name"] == "tiny"
    assert {"torch", "diffusers", "diffii"} <= set(job["versions"])


def test_every_class_has_a_preview_sheet_and_diffii_preview_writes_them(archive, sample, tmp_path):
    from diffii_core.output.preview import archive_previews

    sheets = archive_previews(archive)
    assert list(sheets) == [c.name for c in sample.classes]
    for cls in sample.classes:
        sheet = Image.open(io.BytesIO(sheets[cls.name]))
        # A row of real images, then up to two rows of six synthetic ones, 96 px each.
        rows = 1 + min(2, -(-int(1.5 * len(cls.images)) // 6))
        assert sheet.format == "PNG" and sheet.height == rows * (96 + 4)
    done = run_cli("preview", archive, "--out", tmp_path / "sheets")
    written = sorted(Path(line).name for line in done.stdout.split())
    assert len(written) == len(sample.classes) and all(name.endswith(".png") for name in written)
    missing = run_cli("preview", tmp_path / "nope.zip", ok=False)
    assert missing.returncode != 0 and "no such archive" in missing.stderr


def test_the_archive_loads_as_an_image_folder(archive, sample):
    """What torchvision's ImageFolder and Hugging Face's imagefolder read: every folder is a class,
    every image lies one folder deep and is listed in metadata.jsonl (the previews are not images)."""
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        listed = {json.loads(x)["file_name"] for x in zf.read("metadata.jsonl").decode().splitlines()}
    folders = {n.split("/")[0] for n in names if "/" in n}
    assert folders == {c.name for c in sample.classes}
    images = {n for n in names if Path(n).suffix.lower() in {".png", ".jpg", ".jpeg", ".webp", ".bmp"}}
    assert images == listed and all(n.count("/") == 1 for n in images)


def test_the_same_seed_gives_identical_bytes_with_another_batch_size(archive, sample_dir, tmp_path):
    again = tmp_path / "again.zip"
    run_cli("augment", sample_dir, "--out", again, "--expansion", "1.5", "--batch-size", "8", *FAST)
    with zipfile.ZipFile(archive) as a, zipfile.ZipFile(again) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            assert a.read(name) == b.read(name), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expansion", "0"], "expansion"),
        (["--split-ratio", "1.5"], "split_ratio"),
        (["--guidance-scale", "0.5"], "guidance_scale"),
        (["--resolution", "65"], "resolution"),
        (["--lora-rank", "0"], "concepts.lora_rank"),
        (["--model", "sd-unknown"], "model 'sd-unknown' is not in the model list"),
        (["--model", "local", "--model-path", "local=/nonexistent/model"], "not a diffusers model directory"),
    ],
)
def test_bad_parameters_name_the_field_and_write_nothing(sample_dir, tmp_path, args, message):
    out = tmp_path / "out.zip"
    done = run_cli("augment", sample_dir, "--out", out, *FAST, *args, ok=False)
    assert done.returncode != 0
    assert message in done.stderr
    assert list(tmp_path.iterdir()) == []


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_bad_datasets_get_a_clear_error_and_no_output(tmp_path, sample_dir):
    png = (sample_dir / "circle" / "000.png").read_bytes()
    cases = {
        "not-an-archive.zip": (lambda p: p.write_bytes(b"hello") or p, "not"),
        "traversal.zip": (lambda p: _zip(p, {"../evil/a.png": png, "cat/b.png": png}), ".."),
        "empty-class.zip": (lambda p: _zip(p, {"cat/a.png": b"not an image", "dog/b.png": png}), "cat"),
        "no-class.zip": (lambda p: _zip(p, {"a.png": png}), "class"),
    }
    for name, (make, needle) in cases.items():
        source = make(tmp_path / name)
        out = tmp_path / "out" / "x.zip"
        done = run_cli("augment", source, "--out", out, *FAST, ok=False)
        assert done.returncode != 0, name
        assert needle in done.stderr, (name, done.stderr)
        assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_undecodable_files_are_skipped_and_reported(tmp_path, sample_dir):
    png = (sample_dir / "circle" / "000.png").read_bytes()
    source = _zip(tmp_path / "data.zip", {"cat/a.png": png, "cat/b.png": png[:40], "dog/c.png": png})
    out = tmp_path / "out.zip"
    done = run_cli("augment", source, "--out", out, *FAST, "--expansion", "2")
    assert "cat/b.png" in done.stderr
    with zipfile.ZipFile(out) as zf:
        assert len([n for n in zf.namelist() if n.endswith(".png")]) == 4
        assert "cat/b.png" in zf.read("job.json").decode()
