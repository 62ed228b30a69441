"""The whole method in one process: dataset in, archive out. `diffii augment` is a thin shell on this;
the service runs the same steps split into tasks."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from diffii_core.archive import ArchiveWriter, job_document
from diffii_core.atomic import atomic_write
from diffii_core.classifier import FeatureClassifier, train_classifier
from diffii_core.concept_import import import_published, is_published_layout
from diffii_core.concepts import Concepts, concepts_applied
from diffii_core.dataset import Dataset, DatasetLimits, load_dataset
from diffii_core.generate import generate_share
from diffii_core.inversion import invert_class
from diffii_core.methods import REGISTRY, MethodSpec
from diffii_core.models import LoadedModel, load_model
from diffii_core.params import JobParams, images_for_class
from diffii_core.preview import SYNTHETIC_PER_SHEET, class_sheet
from diffii_core.training import learn_concepts

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
    appears whole or not at all. What runs before generation is what the method's registry entry needs:
    concepts (learned, or reused from `concepts_dir`: ours, or the published Diff-Mix layout), the
    inversion pool, a classifier of the real set. `work_dir` keeps concept-learning checkpoints."""
    began = time.monotonic()
    out = Path(out)
    dataset = load_dataset(source, limits or DatasetLimits())
    model = load_model(params.model, registry, device=device)
    spec = REGISTRY[params.method]
    concepts = _concepts(spec, model, dataset, params, concepts_dir, work_dir, progress)
    classifier = _classifier(spec, model, dataset, params)

    class_names = dataset.class_names()
    counts = [images_for_class(params, len(c.images)) for c in dataset.classes]
    inverting = progress("inverting", dataset.images if spec.inversion else 0)
    generating = progress("generating", sum(counts))
    # A failed or interrupted run leaves no archive (and no part of one) at --out.
    with atomic_write(out) as handle, concepts_applied(model, concepts):
        writer = ArchiveWriter(handle)
        metadata = []
        sheets: dict[str, bytes] = {}
        for cls, count in zip(dataset.classes, counts, strict=True):
            images = [item.open() for item in cls.images]
            pool, shown = None, []
            if spec.inversion:
                assert concepts is not None
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
                references=images if spec.references else None,
                classifier=classifier,
            ):
                writer.add_image(image.file_name, image.png)
                metadata.append(image.metadata)
                if len(shown) < SYNTHETIC_PER_SHEET:
                    shown.append(Image.open(io.BytesIO(image.png)))
                generating(1)
            sheets[cls.name] = class_sheet(cls.name, images, shown)
        classes = [
            {"index": c.index, "name": c.name, "images": len(c.images), "generated": n}
            for c, n in zip(dataset.classes, counts, strict=True)
        ]
        skipped = [{"path": s.path, "reason": s.reason} for s in dataset.skipped]
        writer.add_previews(sheets)
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


def _concepts(
    spec: MethodSpec, model: LoadedModel, dataset: Dataset, params: JobParams, concepts_dir: Path | None,
    work_dir: Path | None, progress: Progress,
) -> Concepts | None:  # fmt: skip
    if not spec.needs_concepts:
        return None  # real-guidance / real-mix / real-filter: the base model with class names
    names = dataset.class_names()
    if concepts_dir is not None and (concepts_dir / "concepts.json").exists():
        concepts = Concepts.load(concepts_dir)
        concepts.check_fits(spec.concepts, names, concepts_dir)
        return concepts
    if concepts_dir is not None and concepts_dir.is_dir() and is_published_layout(concepts_dir):
        concepts = import_published(concepts_dir, names, params.metaclass, params.class_prompts)
        concepts.check_fits(spec.concepts, names, concepts_dir)
        return concepts
    bar = progress("learning concepts", params.concepts.steps)
    concepts = learn_concepts(model, dataset, params, checkpoint_dir=work_dir, progress=lambda s, t: bar(1))
    if concepts_dir is not None:
        concepts.save(concepts_dir)
    return concepts


def _classifier(
    spec: MethodSpec, model: LoadedModel, dataset: Dataset, params: JobParams
) -> FeatureClassifier | None:
    if not spec.classifier:
        return None
    images = [[item.open() for item in c.images] for c in dataset.classes]
    return train_classifier(model, images, params.resolution or model.resolution, params.image_geometry)
