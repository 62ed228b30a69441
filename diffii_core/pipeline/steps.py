"""The method's steps, once: `augment` runs them in one process, the service's worker runs them one shard
at a time (adding only storage, caching, leases and state around each call).

1. `prepare`          how many images each class gets, and from which real images
2. `concepts`         the job's concepts: reused from a folder, imported, or learned
3. `classifier`       Real-Filter's classifier of the real set
4. `invert`           Diff-II's inversion pool of a class
5. `generate`         images [start, stop) of a class
6. `preview`          a class's preview sheet
7. `package`          the archive's preview page, metadata and job document
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from diffii_core.dataset import ClassInfo, Dataset
from diffii_core.denoising.generate import GeneratedImage, generate_share
from diffii_core.inversion.invert import invert_class
from diffii_core.learning.concept_import import import_published, is_published_layout
from diffii_core.learning.concepts import Concepts
from diffii_core.learning.training import learn_concepts
from diffii_core.methods import MethodSpec
from diffii_core.methods.real_filter import FeatureClassifier, fit_real_filter
from diffii_core.models import LoadedModel
from diffii_core.output.archive import ArchiveWriter, job_document
from diffii_core.output.preview import class_sheet
from diffii_core.params import JobParams
from diffii_core.planning import class_counts
from diffii_core.seeding import derive_seed

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ClassPlan:
    """One class of the job: its real images (`sources`, in dataset order), how many to make, and the
    other classes' images that fill its inversion pool (`borrowed`, Diff-II's fill_pool_to)."""

    index: int
    name: str
    images: int
    generated: int
    sources: list[str]
    borrowed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The class as job.json lists it (with the images it borrowed, where it did)."""
        listed = {"index": self.index, "name": self.name, "images": self.images, "generated": self.generated}
        return {**listed, "borrowed": self.borrowed} if self.borrowed else listed


# 1. Prepare ------------------------------------------------------------------------------------------


def prepare(dataset: Dataset, params: JobParams) -> list[ClassPlan]:
    """Each class's share, counted by `diffii_core.planning` (which the job's cost counts too)."""
    counts = class_counts(params, [len(c.images) for c in dataset.classes])
    return [
        ClassPlan(
            index=c.index,
            name=c.name,
            images=count.images,
            generated=count.generated,
            sources=[item.path for item in c.images],
            borrowed=borrowed(dataset, c, params, count.borrowed),
        )
        for c, count in zip(dataset.classes, counts, strict=True)
    ]


def borrowed(dataset: Dataset, cls: ClassInfo, params: JobParams, count: int) -> list[str]:
    """`count` of the other classes' images (`planning.borrowed_count`), drawn without replacement by
    the job seed, that fill a class of fewer than `fill_pool_to` images: a tail class of one image gets
    partners to interpolate with instead of fresh noise."""
    if count <= 0:
        return []
    others = [item.path for c in dataset.classes if c.index != cls.index for item in c.images]
    rng = random.Random(derive_seed(params.seed, "fill-pool", cls.name))
    return rng.sample(others, count)


# 2. Concepts -----------------------------------------------------------------------------------------


def concepts(
    spec: MethodSpec,
    model: LoadedModel,
    dataset: Dataset,
    params: JobParams,
    *,
    concepts_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Concepts | None:
    """None for the methods on the base model. Else the concepts in `concepts_dir` (ours, or the
    published Diff-Mix layout) when it holds some, or concepts learned now (and saved there)."""
    if not spec.needs_concepts:
        return None
    names = dataset.class_names()
    if concepts_dir is not None and (concepts_dir / "concepts.json").exists():
        stored = Concepts.load(concepts_dir)
        stored.check_fits(spec.concepts, names, concepts_dir)
        return stored
    if concepts_dir is not None and concepts_dir.is_dir() and is_published_layout(concepts_dir):
        stored = import_published(concepts_dir, names, params.metaclass, params.class_prompts)
        stored.check_fits(spec.concepts, names, concepts_dir)
        return stored
    learned = learn_concepts(
        model, dataset, params, checkpoint_dir=checkpoint_dir, progress=progress, should_stop=should_stop
    )
    if concepts_dir is not None:
        learned.save(concepts_dir)
    return learned


# 3. Classifier ---------------------------------------------------------------------------------------


def classifier(
    spec: MethodSpec, model: LoadedModel, dataset: Dataset, params: JobParams
) -> FeatureClassifier | None:
    """Deterministic: every process that needs it fits the same one."""
    if not spec.classifier:
        return None
    images = [[item.open() for item in c.images] for c in dataset.classes]
    return fit_real_filter(model, images, params.resolution or model.resolution, params.image_geometry)


# 4. Invert -------------------------------------------------------------------------------------------


def invert(
    spec: MethodSpec,
    model: LoadedModel,
    concepts: Concepts | None,
    dataset: Dataset,
    plan: ClassPlan,
    params: JobParams,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor | None:
    """None unless the method starts from inversions: the class's own images, then its borrowed ones,
    all inverted under the class's concept. Call it inside `concepts_applied`."""
    if not spec.inversion:
        return None
    assert concepts is not None  # every inverting method learns concepts (the registry says so)
    by_path = {item.path: item for c in dataset.classes for item in c.images}
    images = [by_path[path].open() for path in plan.sources + plan.borrowed]
    return invert_class(model, concepts, images, plan.name, params, batch_size=batch_size, progress=progress)


# 5. Generate -----------------------------------------------------------------------------------------


def references(spec: MethodSpec, cls: ClassInfo) -> list[Image.Image] | None:
    """The class's real images for the img2img methods, None for the others."""
    return [item.open() for item in cls.images] if spec.references else None


def generate(
    model: LoadedModel,
    params: JobParams,
    plan: ClassPlan,
    class_names: list[str],
    *,
    start: int,
    stop: int,
    batch_size: int,
    concepts: Concepts | None = None,
    pool: torch.Tensor | None = None,
    references: Sequence[Image.Image] | None = None,
    classifier: FeatureClassifier | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[GeneratedImage]:
    """Images [start, stop) of the class; call it inside `concepts_applied(model, concepts)`."""
    yield from generate_share(
        model, concepts, pool, class_name=plan.name, label_index=plan.index, class_names=class_names,
        source_names=plan.sources + plan.borrowed, own_images=plan.images, params=params, start=start,
        stop=stop, batch_size=batch_size, should_stop=should_stop, references=references,
        classifier=classifier,
    )  # fmt: skip


# 6. Preview ------------------------------------------------------------------------------------------


def preview(plan: ClassPlan, real: Sequence[Image.Image], synthetic: Sequence[bytes]) -> bytes:
    """The class's sheet: its first real images beside the first synthetic PNGs."""
    return class_sheet(plan.name, real, [Image.open(io.BytesIO(png)) for png in synthetic])


# 7. Package ------------------------------------------------------------------------------------------


def package(
    writer: ArchiveWriter,
    sheets: dict[str, bytes],
    metadata: list[dict[str, Any]],
    params: JobParams,
    model: dict[str, str],
    plans: Sequence[ClassPlan],
    skipped: list[dict[str, str]],
    **extra: Any,
) -> None:
    """preview.html, metadata.jsonl and job.json after the images; closes the archive. `sheets`: class
    name -> preview sheet; `model`: {"name", "revision"}."""
    classes = [p.summary() for p in plans]
    writer.finish(sheets, metadata, job_document(params, model, classes, skipped=skipped, **extra))
