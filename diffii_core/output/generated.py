"""One synthetic image as every method hands it over: its place in the archive, its PNG and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GeneratedImage:
    class_name: str
    label_index: int
    index: int
    image_id: str
    file_name: str  # "<class name>/<image id>.png": the path inside the archive
    png: bytes
    metadata: dict[str, Any]


def image_id(label_index: int, index: int) -> str:
    return f"c{label_index:04d}-{index:06d}"
