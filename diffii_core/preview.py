"""Preview sheets: a class's real images beside synthetic ones, in one PNG a person can look at before
downloading an archive. Every archive carries one per class under `preview/`; the service stores them
too, so its API can serve them alone."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROW_GAP = 4
REAL_PER_SHEET = 6
SYNTHETIC_PER_SHEET = 12
PREVIEW_DIR = "preview/"


def _fit(image: Image.Image, cell: int) -> Image.Image:
    image = image.convert("RGB")
    # Enlarging keeps pixels honest (a 32 px image shows its real pixels); shrinking a large photo
    # that way would alias, so it is filtered.
    method = Image.Resampling.NEAREST if max(image.size) <= cell else Image.Resampling.LANCZOS
    return image.resize((cell, cell), method)


def grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]],
    *,
    cell: int = 64,
    label_width: int = 230,
    gap_after: int | None = None,
) -> Image.Image:
    """One row per (label, images), each image scaled to `cell` px. `gap_after` draws a divider
    after that many images in every row (real | synthetic)."""
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
            sheet.paste(_fit(image, cell), (x, y))
    if gap_after is not None:
        x = label_width + gap_after * cell + divider // 2
        draw.line((x, 0, x, height), fill=(200, 30, 30), width=2)
    return sheet


def class_sheet(class_name: str, real: Sequence[Image.Image], synthetic: Sequence[Image.Image]) -> bytes:
    """PNG: a row of the class's real images, then two rows of its synthetic ones."""
    half = SYNTHETIC_PER_SHEET // 2
    made = list(synthetic[:SYNTHETIC_PER_SHEET])
    rows: list[tuple[str, Sequence[Image.Image]]] = [
        (f"{class_name}: real", list(real[:REAL_PER_SHEET])),
        ("synthetic", made[:half]),
    ]
    if len(made) > half:
        rows.append(("", made[half:]))
    buffer = io.BytesIO()
    grid(rows, cell=96, label_width=180).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def preview_name(class_name: str) -> str:
    """The sheet's path inside an archive (class names are folder names, so they are path-safe)."""
    return f"{PREVIEW_DIR}{class_name}.png"


def archive_previews(archive: Path) -> dict[str, bytes]:
    """The preview sheets an archive carries, by class name, in class order."""
    with zipfile.ZipFile(archive) as zf:
        job = json.loads(zf.read("job.json"))
        names = set(zf.namelist())
        return {
            c["name"]: zf.read(preview_name(c["name"]))
            for c in job["classes"]
            if preview_name(c["name"]) in names
        }
