"""`make demo`'s report: it refuses an archive that is not what the demo asked for, and its faithfulness
tells a species' own images from another species'."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from diffii_core.world import domain
from scripts.demo_report import check_archive, faithfulness

CLASSES = ["a", "b"]


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, format="PNG")
    return out.getvalue()


def archive(tmp_path: Path, *, model: str = "world", labels=("a", "b"), extra_image: bool = False) -> Path:
    path = tmp_path / "archive.zip"
    lines = [{"file_name": f"{label}/c{i}-0.png", "label": label} for i, label in enumerate(labels)]
    with zipfile.ZipFile(path, "w") as zf:
        for line in lines:
            zf.writestr(line["file_name"], png())
        if extra_image:
            zf.writestr("a/stray.png", png())
        zf.writestr("metadata.jsonl", "\n".join(json.dumps(line) for line in lines))
        zf.writestr("job.json", json.dumps({"model": {"name": model}}))
        zf.writestr("preview.html", "<html></html>")
    return path


def test_a_sound_archive_gives_its_counts(tmp_path: Path) -> None:
    assert check_archive(archive(tmp_path, labels=("a", "b", "b")), CLASSES) == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model": "tiny"}, "model 'tiny', not 'world'"),
        ({"extra_image": True}, "does not list exactly"),
        ({"labels": ("a", "z")}, "'z', which is no class"),
        ({"labels": ("a",)}, "no synthetic images of ['b']"),
    ],
)
def test_an_archive_that_is_not_the_demos_is_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_archive(archive(tmp_path, **kwargs), CLASSES)


def test_faithfulness_tells_a_species_from_another() -> None:
    one, other = domain.evaluation_species()[:2]
    own = [domain.sample_image(one, domain.image_rng(0, one.index, i))[0] for i in range(8)]
    theirs = [domain.sample_image(other, domain.image_rng(0, other.index, i))[0] for i in range(8)]
    report = faithfulness({one.name: own, other.name: own[:4] + theirs[:4]})
    assert report[one.name] >= 0.85  # the oracle is right on 99 % of real images
    assert report[other.name] <= 0.6  # half are the first species' images
    assert report["all"] == pytest.approx((8 * report[one.name] + 8 * report[other.name]) / 16)
