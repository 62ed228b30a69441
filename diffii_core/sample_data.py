"""A tiny procedural dataset (64 px shapes) for demos, smoke tests and CI; nothing is downloaded.

Four classes, chosen to exercise the awkward cases: a class name with a space and a non-ASCII letter,
a non-Latin name, and a class of one single image. The same seed always gives the same bytes (PNG,
fixed archive timestamps and owners), so a job on the sample dataset is reproducible end to end.

    python -m diffii_core.sample_data OUT_DIR [--archive zip|tar|tar.gz] [--seed N]
"""

from __future__ import annotations

import argparse
import gzip
import io
import math
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Literal

import numpy as np
from PIL import Image, ImageDraw

from diffii_core.output.archive import FIXED_TIME

__all__ = [
    "SAMPLE_CLASSES",
    "SAMPLE_SIZE",
    "main",
    "sample_images",
    "write_sample_archive",
    "write_sample_dataset",
]

ArchiveFormat = Literal["zip", "tar", "tar.gz"]
ARCHIVE_FORMATS: tuple[str, ...] = ("zip", "tar", "tar.gz")

SAMPLE_SIZE = 64
# (class name, image count). Names are NFC; "星 star" is the single-image class.
SAMPLE_CLASSES: tuple[tuple[str, int], ...] = (
    ("circle", 4),
    ("square", 4),
    ("triangle dé", 3),
    ("星 star", 1),
)
_SHAPES = ("circle", "square", "triangle", "star")
# Drawn at 4x and reduced: smooth edges, like a photographed object rather than pixel art.
_SUPERSAMPLE = 4


def sample_images(seed: int = 0) -> list[tuple[str, str, bytes]]:
    """(class name, "<class>/<file>", PNG bytes) for every sample image, in class order."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out: list[tuple[str, str, bytes]] = []
    for class_index, ((name, count), shape) in enumerate(zip(SAMPLE_CLASSES, _SHAPES, strict=True)):
        for i in range(count):
            # One generator per image: changing one class's count never shifts another's pictures.
            rng = np.random.default_rng([seed, class_index, i])
            out.append((name, f"{name}/{i:03d}.png", _png(_draw(shape, rng))))
    return out


def write_sample_dataset(dest: Path, seed: int = 0) -> Path:
    """Write the sample dataset as a folder tree ``dest/<class>/<NNN>.png``; returns ``dest``."""
    dest = Path(dest)
    for _name, rel, png in sample_images(seed):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png)
    return dest


def write_sample_archive(dest_file: Path, fmt: ArchiveFormat = "zip", seed: int = 0) -> Path:
    """Write the sample dataset as one zip, tar or tar.gz (byte-identical for a seed); returns the path."""
    if fmt not in ARCHIVE_FORMATS:
        raise ValueError(f"archive format must be one of {', '.join(ARCHIVE_FORMATS)}, got {fmt!r}")
    dest_file = Path(dest_file)
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    images = sample_images(seed)
    folders = list(dict.fromkeys(name for name, _rel, _png in images))
    if fmt == "zip":
        _write_zip(dest_file, folders, images)
    else:
        with dest_file.open("wb") as fp:
            if fmt == "tar.gz":
                # mtime=0 and no file name in the gzip header: otherwise every run differs.
                with gzip.GzipFile(filename="", mode="wb", fileobj=fp, mtime=0) as gz:
                    _write_tar(gz, folders, images)
            else:
                _write_tar(fp, folders, images)
    return dest_file


def _write_zip(dest_file: Path, folders: list[str], images: list[tuple[str, str, bytes]]) -> None:
    with zipfile.ZipFile(dest_file, "w") as zf:
        for folder in folders:
            info = zipfile.ZipInfo(f"{folder}/", date_time=FIXED_TIME)
            info.create_system = 3  # the default depends on the platform writing the file
            info.external_attr = (0o40755 << 16) | 0x10
            zf.writestr(info, b"")
        for _name, rel, png in images:
            info = zipfile.ZipInfo(rel, date_time=FIXED_TIME)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, png)


def _write_tar(fp: IO[bytes], folders: list[str], images: list[tuple[str, str, bytes]]) -> None:
    with tarfile.open(fileobj=fp, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for folder in folders:
            tf.addfile(_tar_info(folder, tarfile.DIRTYPE, 0o755, 0))
        for _name, rel, png in images:
            tf.addfile(_tar_info(rel, tarfile.REGTYPE, 0o644, len(png)), io.BytesIO(png))


def _tar_info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _draw(shape: str, rng: np.random.Generator) -> Image.Image:
    big = SAMPLE_SIZE * _SUPERSAMPLE
    dark_background = bool(rng.random() < 0.5)
    background = _colour(rng, light=not dark_background)
    image = _background(rng, background, big)
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.36) * big
    margin = radius * 1.05
    cx = rng.uniform(margin, big - margin)
    cy = rng.uniform(margin, big - margin)
    angle = rng.uniform(0, 2 * math.pi)
    fill = _colour(rng, light=dark_background)
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        draw.polygon(_regular_polygon(cx, cy, radius, 4, angle), fill=fill)
    elif shape == "triangle":
        draw.polygon(_regular_polygon(cx, cy, radius, 3, angle), fill=fill)
    else:
        draw.polygon(_star(cx, cy, radius, angle), fill=fill)
    return image.resize((SAMPLE_SIZE, SAMPLE_SIZE), Image.Resampling.LANCZOS)


def _background(rng: np.random.Generator, colour: tuple[int, int, int], size: int) -> Image.Image:
    style = int(rng.integers(0, 3))
    base = np.empty((size, size, 3), dtype=np.float64)
    base[:] = colour
    if style == 1:  # a soft vertical gradient
        ramp = np.linspace(-1.0, 1.0, size)[:, None, None]
        base += ramp * rng.uniform(15, 45)
    elif style == 2:  # film-grain noise
        base += rng.normal(0.0, 12.0, size=(size, size, 1))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _colour(rng: np.random.Generator, *, light: bool) -> tuple[int, int, int]:
    low, high = (150, 256) if light else (0, 106)
    r, g, b = (int(v) for v in rng.integers(low, high, size=3))
    return r, g, b


def _regular_polygon(cx: float, cy: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (
            cx + r * math.cos(angle + 2 * math.pi * k / sides),
            cy + r * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def _star(cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        radius = r if k % 2 == 0 else r * 0.45
        theta = angle + math.pi * k / 5
        points.append((cx + radius * math.cos(theta), cy + radius * math.sin(theta)))
    return points


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffii_core.sample_data",
        description="Write the procedural sample dataset (64 px shapes, 4 classes, one with a single image).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write into")
    parser.add_argument(
        "--archive",
        choices=ARCHIVE_FORMATS,
        help="write OUT_DIR/sample.<format> instead of a folder tree",
    )
    parser.add_argument("--seed", type=int, default=0, help="drawing seed (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.archive:
        written = write_sample_archive(args.out_dir / f"sample.{args.archive}", args.archive, seed=args.seed)
    else:
        written = write_sample_dataset(args.out_dir, seed=args.seed)
    print(written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
