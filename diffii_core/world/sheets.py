"""Contact sheets: labelled rows of images in one PNG, for people who would rather look than read."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

from PIL import Image

from diffii_core.output.preview import grid


def archive_images(archive: Path) -> dict[str, list[Image.Image]]:
    """Synthetic images of an augment archive, by class name, in metadata order."""
    out: dict[str, list[Image.Image]] = {}
    with zipfile.ZipFile(archive) as zf:
        for line in zf.read("metadata.jsonl").decode().splitlines():
            record = json.loads(line)
            image = Image.open(io.BytesIO(zf.read(record["file_name"]))).convert("RGB")
            out.setdefault(record["label"], []).append(image)
    return out


def real_vs_synthetic(train_dir: Path, archive: Path, *, real: int = 5, synthetic: int = 10) -> Image.Image:
    """Per class: its real training images, a red divider, then synthetic images from the archive."""
    made = archive_images(archive)
    rows = []
    for folder in sorted(p for p in Path(train_dir).iterdir() if p.is_dir()):
        reals = [Image.open(p) for p in sorted(folder.iterdir())[:real]]
        reals += [Image.new("RGB", (8, 8), (255, 255, 255))] * (real - len(reals))
        rows.append((folder.name, reals + made.get(folder.name, [])[:synthetic]))
    return grid(rows, gap_after=real)
