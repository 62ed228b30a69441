"""Object keys of a job's artifacts (docs/ARCHITECTURE.md). Deterministic: a re-run overwrites."""

from __future__ import annotations


def dataset_prefix(dataset_id: str) -> str:
    """An uploaded dataset's objects (its source archive) lie under this prefix."""
    return f"datasets/{dataset_id}/"


def dataset_source(dataset_id: str, ext: str) -> str:
    return f"{dataset_prefix(dataset_id)}source.{ext}"


def job_prefix(job_id: str) -> str:
    """Everything a job stored lies under this prefix (what deletion and retention remove)."""
    return f"jobs/{job_id}/"


def concepts_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/concepts/"


def checkpoint_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/checkpoint/"


def pool(job_id: str, class_index: int) -> str:
    return f"jobs/{job_id}/pools/{class_index}.safetensors"


def images_prefix(job_id: str, class_index: int) -> str:
    return f"jobs/{job_id}/images/{class_index}/"


def image_png(job_id: str, class_index: int, index: int) -> str:
    return f"{images_prefix(job_id, class_index)}{index:06d}.png"


def image_meta(job_id: str, class_index: int, index: int) -> str:
    return f"{images_prefix(job_id, class_index)}{index:06d}.json"


def pools_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/pools/"


def all_images_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/images/"


def preview_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/preview/"


def preview(job_id: str, class_index: int) -> str:
    return f"{preview_prefix(job_id)}{class_index}.png"


def archive(job_id: str) -> str:
    return f"jobs/{job_id}/archive.zip"


def stored_indices(keys: list[str]) -> set[int]:
    """Image indices whose metadata exists. The PNG is written first, so a .json marks a whole image."""
    out = set()
    for key in keys:
        name = key.rsplit("/", 1)[-1]
        if name.endswith(".json") and name[:-5].isdigit():
            out.add(int(name[:-5]))
    return out
