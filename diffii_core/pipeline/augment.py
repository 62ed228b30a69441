"""The whole method in one process: dataset in, archive out. `diffii augment` is a thin shell on this;
the service's worker runs the same steps (`diffii_core.pipeline.steps`) one shard at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffii_core.atomic import atomic_write
from diffii_core.candidates import CANDIDATES
from diffii_core.dataset import DatasetLimits, load_dataset
from diffii_core.learning.concepts import concepts_applied
from diffii_core.models import load_model
from diffii_core.output.archive import ArchiveWriter
from diffii_core.output.preview import SYNTHETIC_PER_SHEET
from diffii_core.params import AUTO, JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.choice import choose

# progress(stage, total) opens that stage's bar and returns a function that advances it by n.
StageBars = Callable[[str, int], Callable[[int], None]]


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
    chosen: str | None = None  # method "auto": the candidate chosen for the dataset


def augment(
    source: str | Path,
    out: str | Path,
    params: JobParams,
    *,
    models: Mapping[str, str] | None = None,
    device: str | None = None,
    batch_size: int = 8,
    limits: DatasetLimits | None = None,
    work_dir: Path | None = None,
    concepts_dir: Path | None = None,
    progress: StageBars = _no_progress,
) -> AugmentSummary:
    """Run params.method (Diff-II or a baseline) on a dataset and write the archive to `out`; the file
    appears whole or not at all. What runs before generation is what the method's registry entry needs:
    concepts (learned, or reused from `concepts_dir`: ours, or the published Diff-Mix layout), the
    inversion pool, a classifier of the real set. `work_dir` keeps concept-learning checkpoints."""
    began = time.monotonic()
    out = Path(out)
    dataset = load_dataset(source, limits or DatasetLimits())
    model = load_model(params.model, models, device=device)
    spec = params.spec

    # 1. Prepare: each class's share
    plans = steps.prepare(dataset, params)
    class_names = dataset.class_names()
    # 2. Learn the concepts (or load them)
    concepts = steps.learn_or_load_concepts(
        spec, model, dataset, params, concepts_dir=concepts_dir, checkpoint_dir=work_dir,
        progress=_learning_bar(progress, params.concepts.steps),
    )  # fmt: skip
    # Method "auto": score the candidates on the real images, then make the share with the chosen one
    extra: dict[str, Any] = {}
    if params.method == AUTO:
        bar = progress("choosing a recipe", dataset.images * len(CANDIDATES))
        choice = choose(model, concepts, dataset, params, plans, batch_size=batch_size, progress=bar)
        params, spec, extra = choice.params, choice.params.spec, {"choice": choice.record}
    # Real-Filter's classifier: a baseline's preparation for step 5
    classifier = steps.fit_classifier(spec, model, dataset, params)

    inverting = progress("inverting", sum(p.images + len(p.borrowed) for p in plans) if spec.inversion else 0)
    generating = progress("generating", sum(p.generated for p in plans))
    # A failed or interrupted run leaves no archive (and no part of one) at --out.
    with atomic_write(out) as handle, concepts_applied(model, concepts):
        writer = ArchiveWriter(handle)
        metadata = []
        sheets: dict[str, bytes] = {}
        for cls, plan in zip(dataset.classes, plans, strict=True):
            # 3. Invert
            pool = steps.invert(
                spec, model, concepts, dataset, plan, params, batch_size=batch_size, progress=inverting
            )
            # 4. Interpolate and 5. Denoise
            shown = []
            references = steps.reference_images(spec, cls)
            for image in steps.generate(
                model, params, plan, class_names, start=0, stop=plan.generated, batch_size=batch_size,
                concepts=concepts, pool=pool, references=references, classifier=classifier,
            ):  # fmt: skip
                writer.add_image(image.file_name, image.png)
                metadata.append(image.metadata)
                if len(shown) < SYNTHETIC_PER_SHEET:
                    shown.append(image.png)
                generating(1)
            # 6. Package: the class's preview sheet, then the archive
            sheets[cls.name] = steps.render_preview(plan, [item.open() for item in cls.images], shown)
        skipped = dataset.manifest()["skipped"]
        used = {"name": model.name, "revision": model.revision}
        steps.package(writer, sheets, metadata, params, used, plans, skipped, **extra)
    return AugmentSummary(
        out=out,
        classes=len(class_names),
        real_images=dataset.images,
        images=sum(p.generated for p in plans),
        skipped=skipped,
        seconds=time.monotonic() - began,
        chosen=extra["choice"]["chosen"] if extra else None,
    )


def _learning_bar(progress: StageBars, total_steps: int) -> Callable[[int, int], None]:
    """The concept-learning bar, opened at the first step: no bar when concepts are reused."""
    bar: list[Callable[[int], None]] = []

    def advance(step: int, total: int) -> None:
        if not bar:
            bar.append(progress("learning concepts", total_steps))
        bar[0](1)

    return advance
