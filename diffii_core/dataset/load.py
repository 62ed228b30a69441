"""The two entry points: the full read (every image decoded once) and the cheap structural check.

Everything is read into memory and nothing is written: uploads come from strangers, so every member
is checked (names, links, counts, sizes) before its bytes are trusted. Undecodable images and images
over the pixel limit are skipped and reported; a class left without images raises DatasetError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from diffii_core.dataset.decode import SIGNATURE_REASON, has_image_signature, skip_reason
from diffii_core.dataset.detect import SourceFormat, detect_format, label
from diffii_core.dataset.folder_reader import folder_members
from diffii_core.dataset.layout import Layout, arrange
from diffii_core.dataset.limits import DEFAULT_LIMITS, Budget, DatasetLimits
from diffii_core.dataset.members import Member
from diffii_core.dataset.model import ClassInfo, Dataset, DatasetSummary, ImageItem
from diffii_core.dataset.report import empty_classes_message
from diffii_core.dataset.tar_reader import tar_members
from diffii_core.dataset.zip_reader import zip_members
from diffii_core.errors import DatasetError


def load_dataset(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> Dataset:
    """Read and check a dataset folder or archive; decode every image once to prove it usable.

    Raises DatasetError when the source is unsafe, over a limit, has no class, or leaves a class
    without a usable image. Files that cannot be used are listed in ``Dataset.skipped``.
    """
    path = Path(source)
    name = label(path)
    fmt = detect_format(path, limits)
    layout = arrange(_read_members(path, fmt, limits, name, "data"), limits, name)

    classes: list[ClassInfo] = []
    for index, class_name in enumerate(layout.class_names):
        images: list[ImageItem] = []
        for rel, member in layout.files[class_name]:
            assert member.data is not None  # "data" reads every image-suffix file in a class
            reason, (width, height) = skip_reason(member.data, limits.max_pixels)
            if reason is None:
                images.append(ImageItem(class_name, rel, member.data, width, height))
            else:
                layout.skip(class_name, member, reason)
        classes.append(ClassInfo(name=class_name, index=index, images=images))
    _refuse_empty_classes(layout, name, {c.name: len(c.images) for c in classes})
    layout.skipped.sort(key=lambda s: s.path)
    return Dataset(classes=classes, skipped=layout.skipped)


def inspect_archive(source: str | Path, limits: DatasetLimits = DEFAULT_LIMITS) -> DatasetSummary:
    """Apply every structural check of :func:`load_dataset` and list the classes, decoding nothing.

    Cheap enough for an upload request: of each image file only its first bytes are read (its
    signature); a tar is streamed through once. Damaged images and the pixel limit are only caught by
    load_dataset, so a class this accepts can still end up empty there.
    """
    path = Path(source)
    name = label(path)
    fmt = detect_format(path, limits)
    layout = arrange(_read_members(path, fmt, limits, name, "head"), limits, name)
    counts: dict[str, int] = {}
    for class_name in layout.class_names:
        counts[class_name] = 0
        for _rel, member in layout.files[class_name]:
            assert member.head is not None  # "head" reads the start of every image-suffix file
            if has_image_signature(member.head):
                counts[class_name] += 1
            else:
                layout.skip(class_name, member, SIGNATURE_REASON)
    _refuse_empty_classes(layout, name, counts)
    return DatasetSummary(
        format=fmt,
        class_names=list(layout.class_names),
        image_files=counts,
        skipped=sorted(layout.skipped, key=lambda s: s.path),
    )


def _refuse_empty_classes(layout: Layout, name: str, counts: dict[str, int]) -> None:
    empty = [c for c in layout.class_names if counts[c] == 0]
    if empty:
        raise DatasetError(empty_classes_message(name, empty, layout.class_skips))


def _read_members(
    path: Path, fmt: SourceFormat, limits: DatasetLimits, name: str, content: Literal["data", "head"]
) -> list[Member]:
    budget = Budget(limits, name)
    if fmt == "folder":
        return folder_members(path, budget, content)
    if fmt == "zip":
        return zip_members(path, budget, content)
    return tar_members(path, fmt, budget, content)
