"""Preview sheets: a class's real images beside synthetic ones, in one PNG a person can look at before
downloading an archive. Every archive carries them in `preview.html`; the service stores them too, so
its API can serve them alone."""

from __future__ import annotations

import base64
import html
import io
import re
import zipfile
from collections.abc import Sequence
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROW_GAP = 4
REAL_PER_SHEET = 6
SYNTHETIC_PER_SHEET = 12
PREVIEW_PAGE = "preview.html"
DATA_URI = "data:image/png;base64,"
LINE_HEIGHT = 12  # px a line of the default font takes in a row label


def _fit(image: Image.Image, cell: int) -> Image.Image:
    image = image.convert("RGB")
    # Enlarging keeps pixels honest (a 32 px image shows its real pixels); shrinking a large photo
    # that way would alias, so it is filtered.
    method = Image.Resampling.NEAREST if max(image.size) <= cell else Image.Resampling.LANCZOS
    return image.resize((cell, cell), method)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: float) -> list[str]:
    """Greedy lines of `text` no wider than `width`, broken after a space or `_` (class folder names
    such as the world's `purple_bird_with_brown_wings_...` are long, and their end tells classes apart)."""
    lines = [""]
    for piece in re.findall(r"[^ _]+[ _]?|[ _]", text):
        if lines[-1] and draw.textlength(lines[-1] + piece, font=font) > width:
            lines.append("")
        lines[-1] += piece
    return lines


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
        lines = _wrap(draw, label, font, label_width - 8)[: max(1, cell // LINE_HEIGHT)]
        top = y + (cell - len(lines) * LINE_HEIGHT) // 2
        for i, line in enumerate(lines):
            draw.text((4, top + i * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
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


def preview_page(sheets: dict[str, bytes]) -> bytes:
    """One self-contained HTML page holding every class's sheet (PNG data URIs), in class order.

    The archive carries this page rather than a `preview/` folder of PNGs: torchvision's ImageFolder
    would read such a folder as one more class, and Hugging Face's imagefolder refuses image files that
    metadata.jsonl does not list; a page at the root is invisible to both, and opens in any browser."""
    parts = [
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>diffii preview</title></head>'
        '<body style="font-family:sans-serif">\n'
    ]
    for name, png in sheets.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f"<h2>{html.escape(name)}</h2>\n"
            f'<img data-class="{html.escape(name, quote=True)}" src="data:image/png;base64,{data}">\n'
        )
    parts.append("</body></html>\n")
    return "".join(parts).encode("utf-8")


class _Sheets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sheets: dict[str, bytes] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        name, src = found.get("data-class"), found.get("src") or ""
        if tag == "img" and name is not None and src.startswith(DATA_URI):
            self.sheets[name] = base64.b64decode(src[len(DATA_URI) :])


def archive_previews(archive: Path) -> dict[str, bytes]:
    """The preview sheets (PNG) an archive carries, by class name, in class order."""
    with zipfile.ZipFile(archive) as zf:
        if PREVIEW_PAGE not in zf.namelist():
            return {}
        parser = _Sheets()
        parser.feed(zf.read(PREVIEW_PAGE).decode("utf-8"))
    return parser.sheets
