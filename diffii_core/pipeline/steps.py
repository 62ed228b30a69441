"""The method's steps, once: `augment` runs them in one process, the service's worker runs them one shard
at a time (adding only storage, caching, leases and state around each call). The numbers are the ones of
docs/methods.md; the service's stages are prepare = 1, learn = 2, generate = 3-5, package = 6.

1. prepare      `prepare`                  each class's share: how many images, from which real images
2. learn        `learn_or_load_concepts`   the job's concepts: learned, or `load_concepts` from a folder
3. invert       `invert`                   Diff-II's inversion pool of a class
4. interpolate  (in `generate`)            Diff-II's random circle interpolation (`methods/diff_ii.py`)
5. denoise      `generate`                 images [start, stop) of a class: Diff-II's two-stage denoising,
                                           or a baseline's img2img / text-to-image sampler, which may
                                           need `reference_images` and `fit_classifier` (Real-Filter)
6. package      `render_preview`,          a class's preview sheet; the archive's metadata and job
                `package`                  document
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
from diffii_core.errors import ArtifactError
from diffii_core.inversion.invert import invert_class
from diffii_core.learning.concept_import import import_published, is_published_layout
from diffii_core.learning.concepts import CONCEPTS_FILE, Concepts
from diffii_core.learning.training import learn_concepts
from diffii_core.methods import MethodSpec
from diffii_core.methods.real_filter import FeatureClassifier, fit_real_filter
from diffii_core.models import LoadedModel
from diffii_core.output.archive import ArchiveWriter, job_document
from diffii_core.output.generated import GeneratedImage
from diffii_core.output.preview import class_sheet
from diffii_core.params import JobParams
from diffii_core.pipeline.generate import generate_share
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


# 2. Learn --------------------------------------------------------------------------------------------


def learn_or_load_concepts(
    spec: MethodSpec,
    model: LoadedModel,
    dataset: Dataset,
    params: JobParams,
    *,
    concepts_dir: Path | None = None,
    checkpoint_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    slice_over: Callable[[int], bool] | None = None,
) -> Concepts | None:
    """None for the methods on the base model. Else the concepts in `concepts_dir` when it holds some
    (`load_concepts`), or concepts learned now (and saved there). With `slice_over`, learning may end
    a slice early (`training.SliceEnded`, its checkpoint in `checkpoint_dir`); call again to go on."""
    if not spec.needs_concepts:
        return None
    if concepts_dir is not None and holds_concepts(concepts_dir):
        return load_concepts(spec, concepts_dir, dataset.class_names(), params)
    learned = learn_concepts(
        model, dataset, params, checkpoint_dir=checkpoint_dir, progress=progress, should_stop=should_stop,
        slice_over=slice_over,
    )  # fmt: skip
    if concepts_dir is not None:
        learned.save(concepts_dir)
    return learned


def holds_concepts(folder: Path) -> bool:
    """Whether `folder` holds concepts: ours (concepts.json), or the published Diff-Mix layout."""
    return (folder / CONCEPTS_FILE).exists() or (folder.is_dir() and is_published_layout(folder))


def load_concepts(spec: MethodSpec, folder: Path, class_names: list[str], params: JobParams) -> Concepts:
    """The concepts stored in `folder` (ours, or the published Diff-Mix layout), checked to fit the
    method's kind and the job's classes: every reader of stored concepts comes through here."""
    if not holds_concepts(folder):
        raise ArtifactError(
            f"{folder} holds no learned concepts (no {CONCEPTS_FILE}, no published Diff-Mix layout)"
        )
    if (folder / CONCEPTS_FILE).exists():
        stored = Concepts.load(folder)
    else:
        stored = import_published(folder, class_names, params.metaclass, params.class_prompts)
    stored.check_fits(spec.concepts, class_names, folder)
    return stored


# 3. Invert -------------------------------------------------------------------------------------------


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


# 4. Interpolate and 5. Denoise ----------------------------------------------------------------------


def reference_images(spec: MethodSpec, cls: ClassInfo) -> list[Image.Image] | None:
    """The class's real images for the img2img methods, None for the others."""
    return [item.open() for item in cls.images] if spec.references else None


def fit_classifier(
    spec: MethodSpec, model: LoadedModel, dataset: Dataset, params: JobParams
) -> FeatureClassifier | None:
    """Real-Filter's classifier of the real set (a baseline's preparation for step 5), None for the other
    methods. Deterministic: every process that needs it fits the same one."""
    if not spec.classifier:
        return None
    images = [[item.open() for item in c.images] for c in dataset.classes]
    return fit_real_filter(model, images, params.resolution or model.resolution, params.image_geometry)


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
    """Images [start, stop) of the class: Diff-II's steps 4 and 5 from the class's `pool`, a baseline's
    step 5; call it inside `concepts_applied(model, concepts)`."""
    yield from generate_share(
        model, concepts, pool, class_name=plan.name, label_index=plan.index, class_names=class_names,
        source_names=plan.sources + plan.borrowed, own_images=plan.images, params=params, start=start,
        stop=stop, batch_size=batch_size, should_stop=should_stop, references=references,
        classifier=classifier,
    )  # fmt: skip


# 6. Package -----------------------------------------------------------------------------------------


def render_preview(plan: ClassPlan, real: Sequence[Image.Image], synthetic: Sequence[bytes]) -> bytes:
    """The class's sheet: its first real images beside the first synthetic PNGs."""
    return class_sheet(plan.name, real, [Image.open(io.BytesIO(png)) for png in synthetic])


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
