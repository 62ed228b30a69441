"""Contact sheets: labelled rows of images in one PNG, for people who would rather look than read."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROW_GAP = 4


def grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    *,
    cell: int = 64,
    label_width: int = 230,
    gap_after: int | None = None,
) -> Image.Image:
    """One row per (label, images); images scaled to `cell` px (nearest: pixels stay honest).
    `gap_after` draws a divider after that many images in every row (real | synthetic)."""
    columns = max((len(images) for _, images in rows), default=1)
    divider = 8 if gap_after is not None else 0
    width = label_width + columns * cell + divider
    height = len(rows) * (cell + ROW_GAP)
    sheet = Image.new("RGB", (width, max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (label, images) in enumerate(rows):
        y = r * (cell + ROW_GAP)
        draw.text((4, y + cell // 2 - 6), label, fill=(0, 0, 0), font=font)
        for c, image in enumerate(images):
            x = label_width + c * cell + (divider if gap_after is not None and c >= gap_after else 0)
            sheet.paste(image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
    if gap_after is not None:
        x = label_width + gap_after * cell + divider // 2
        draw.line((x, 0, x, height), fill=(200, 30, 30), width=2)
    return sheet


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
