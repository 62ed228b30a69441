"""What a read dataset is: classes of usable images, and the files left out with their reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from diffii_core.dataset.decode import decode_rgb
from diffii_core.dataset.detect import SourceFormat


@dataclass
class ImageItem:
    """One usable image: its original bytes, and the size that :meth:`open` returns."""

    class_name: str
    path: str  # "<class>/<file>" (or "<class>/<sub folder>/<file>"), POSIX, NFC, wrapper removed
    data: bytes = field(repr=False)
    width: int
    height: int

    def open(self) -> Image.Image:
        """The image as 8-bit RGB, upright (EXIF orientation applied), transparency over white."""
        return decode_rgb(self.data)


@dataclass
class ClassInfo:
    name: str
    index: int
    images: list[ImageItem]


@dataclass
class Skipped:
    """A file left out. ``path`` is where it lies in the source (NFC, POSIX), wrapper folder included."""

    path: str
    reason: str


@dataclass
class Dataset:
    classes: list[ClassInfo]
    skipped: list[Skipped]

    @property
    def images(self) -> int:
        return sum(len(c.images) for c in self.classes)

    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def manifest(self) -> dict:
        return {
            "classes": [{"name": c.name, "images": len(c.images)} for c in self.classes],
            "images": self.images,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


@dataclass
class DatasetSummary:
    """What :func:`inspect_archive` finds without decoding: image *files* per class, not usable images."""

    format: SourceFormat
    class_names: list[str]  # sorted; position = class index
    image_files: dict[str, int]  # class name -> files with an image suffix and signature
    skipped: list[Skipped]  # structural skips only (non-image files, root files, duplicates, signatures)
