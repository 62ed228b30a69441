"""The whole method in one process: dataset in, archive out. `diffii augment` is a thin shell on this;
the service runs the same steps split into tasks."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from diffii_core.archive import ArchiveWriter, job_document
from diffii_core.atomic import atomic_write
from diffii_core.concepts import Concepts, apply_concepts, learn_concepts
from diffii_core.dataset import DatasetLimits, load_dataset
from diffii_core.generate import generate_share
from diffii_core.inversion import invert_class
from diffii_core.models import load_model
from diffii_core.params import JobParams, images_for_class, uses_concepts, uses_inversion, uses_references

# progress(stage, total) returns a function that advances that stage's bar by n.
Progress = Callable[[str, int], Callable[[int], None]]


def _no_progress(stage: str, total: int) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class AugmentSummary:
    out: Path
    classes: int
    real_images: int
    images: int
    skipped: list[dict[str, str]]
    seconds: float


def augment(
    source: str | Path,
    out: str | Path,
    params: JobParams,
    *,
    registry: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int = 8,
    limits: DatasetLimits | None = None,
    work_dir: Path | None = None,
    concepts_dir: Path | None = None,
    progress: Progress = _no_progress,
) -> AugmentSummary:
    """Run params.method (Diff-II or a baseline) on a dataset and write the archive to `out`; the file
    appears whole or not at all. Methods without concepts skip learning; only Diff-II inverts.
    `work_dir` keeps concept-learning checkpoints (a rerun resumes); `concepts_dir` saves the learned
    concepts, or reuses them when already there."""
    began = time.monotonic()
    out = Path(out)
    dataset = load_dataset(source, limits or DatasetLimits())
    model = load_model(params.model, registry, device=device)

    concepts: Concepts | None = None
    if not uses_concepts(params.method):
        pass  # real-guidance / real-mix: the base model with plain class names, nothing to learn
    elif concepts_dir is not None and (concepts_dir / "concepts.json").exists():
        concepts = Concepts.load(concepts_dir)
    else:
        bar = progress("learning concepts", params.concepts.steps)
        concepts = learn_concepts(
            model, dataset, params, checkpoint_dir=work_dir, progress=lambda step, total: bar(1)
        )
        if concepts_dir is not None:
            concepts.save(concepts_dir)
    apply_concepts(model, concepts)

    class_names = dataset.class_names()
    counts = [images_for_class(params, len(c.images)) for c in dataset.classes]
    inverting = progress("inverting", dataset.images if uses_inversion(params.method) else 0)
    generating = progress("generating", sum(counts))
    # A failed or interrupted run leaves no archive (and no part of one) at --out.
    with atomic_write(out) as handle:
        writer = ArchiveWriter(handle)
        metadata = []
        for cls, count in zip(dataset.classes, counts, strict=True):
            images = [item.open() for item in cls.images]
            pool = None
            if uses_inversion(params.method):
                pool = invert_class(
                    model, concepts, images, cls.name, params, batch_size=batch_size, progress=inverting
                )
            for image in generate_share(
                model,
                concepts,
                pool,
                class_name=cls.name,
                label_index=cls.index,
                class_names=class_names,
                source_names=[item.path for item in cls.images],
                params=params,
                start=0,
                stop=count,
                batch_size=batch_size,
                references=images if uses_references(params.method) else None,
            ):
                writer.add_image(image.file_name, image.png)
                metadata.append(image.metadata)
                generating(1)
        classes = [
            {"index": c.index, "name": c.name, "images": len(c.images), "generated": n}
            for c, n in zip(dataset.classes, counts, strict=True)
        ]
        skipped = [{"path": s.path, "reason": s.reason} for s in dataset.skipped]
        writer.finish(
            metadata,
            job_document(params, {"name": model.name, "revision": model.revision}, classes, skipped=skipped),
        )
    return AugmentSummary(
        out=out,
        classes=len(class_names),
        real_images=dataset.images,
        images=sum(counts),
        skipped=skipped,
        seconds=time.monotonic() - began,
    )
