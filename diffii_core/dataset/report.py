"""The words of a refused dataset: what was expected, what was found, why each class is empty."""

from __future__ import annotations

from diffii_core.dataset.members import Member
from diffii_core.dataset.model import Skipped
from diffii_core.dataset.names import IMAGE_SUFFIXES

MAX_REASONS_IN_ERROR = 5


def no_class_message(label: str, members: list[Member], skipped: list[Skipped]) -> str:
    expected = f"expected <class name>/<image> with images {', '.join(sorted(IMAGE_SUFFIXES))}"
    if not members:
        return f"{label!r} holds no files: no class folder with images ({expected})"
    root_files = [s.path for s in skipped if "/" not in s.path]
    hint = ""
    if root_files:
        shown = ", ".join(repr(p) for p in root_files[:MAX_REASONS_IN_ERROR])
        more = (
            f" and {len(root_files) - MAX_REASONS_IN_ERROR} more"
            if len(root_files) > MAX_REASONS_IN_ERROR
            else ""
        )
        hint = f"; found only files outside any folder: {shown}{more}"
    return f"{label!r} has no class folder with images ({expected}){hint}"


def empty_classes_message(label: str, empty: list[str], class_skips: dict[str, list[Skipped]]) -> str:
    pieces = []
    for name in empty:
        skips = class_skips.get(name, [])
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in skips[:MAX_REASONS_IN_ERROR])
        if len(skips) > MAX_REASONS_IN_ERROR:
            reasons += f"; and {len(skips) - MAX_REASONS_IN_ERROR} more"
        pieces.append(f"class {name!r} has no usable image ({reasons or 'no image files'})")
    return f"{label!r}: " + ". ".join(pieces)
