"""Member names: what is safe, what is noise, what counts as an image by its suffix."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from diffii_core.errors import DatasetError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

_NOISE_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")


def safe_parts(name: str, label: str, *, archive: bool) -> tuple[str, ...]:
    """Path components of a member name, NFC; DatasetError for anything that could leave the tree."""
    if "\x00" in name:
        raise DatasetError(f"{label!r}: member {name!r} has a NUL character in its name")
    # Windows tools write backslashes as separators, and extractors on Windows honour them, so
    # "..\\x" is as much a traversal as "../x".
    posix = name.replace("\\", "/") if archive else name
    if posix.startswith("/"):
        raise DatasetError(f"{label!r}: member {name!r} has an absolute path; paths must be relative")
    if _DRIVE_LETTER.match(posix):
        raise DatasetError(f"{label!r}: member {name!r} starts with a drive letter; paths must be relative")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(f"{label!r}: member {name!r} contains '..' (path traversal)")
    return tuple(unicodedata.normalize("NFC", p) for p in parts)


def control_character(text: str) -> str | None:
    """The first control character (Unicode Cc: NUL, newline, escape...) of `text`, named, or None.

    Such characters would reach prompts and metadata.jsonl lines, so names and prompt text refuse them.
    """
    for position, ch in enumerate(text):
        if unicodedata.category(ch) == "Cc":
            return f"control character U+{ord(ch):04X} at position {position}"
    return None


def fix_undecodable(name: str) -> str:
    """Tar and POSIX names are bytes; names that are not UTF-8 are read as Latin-1 rather than lost."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("latin-1")
    return name


def is_noise(parts: Iterable[str]) -> bool:
    return any(p.startswith(".") or p.casefold() in _NOISE_NAMES for p in parts)


def suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def wants_bytes(parts: tuple[str, ...]) -> bool:
    """Whether a file may become an image, so its bytes (or its signature) are worth reading."""
    # Root files never become images (unwrapping only removes a level when no file lies there).
    return len(parts) >= 2 and not is_noise(parts) and suffix(parts[-1]) in IMAGE_SUFFIXES
