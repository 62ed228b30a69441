"""How much a job makes and what that costs, counted once: the planner (`pipeline.steps.prepare`) and
the API's quota check (`job_cost`) both read these functions, so the cost counts exactly the images
and inversions the pipeline will run.

One cost unit is one forward (or forward and backward) pass of the model at 512 x 512 pixels:

    cost = (concept steps x batch x accumulation      (0 for methods that learn no concept)
            + images x denoising steps
            + inversions x inversion steps)            (0 for methods without an inversion pool)
           x (resolution / 512)^2

where images = `images_for_class` summed over the classes (floor(expansion x real images)),
inversions = real images plus the images borrowed to fill small classes' pools (`borrowed_count`:
up to fill_pool_to, at most what the other classes hold), and resolution is the job's own, or 512
when it names none (the API does not load models, so it cannot read a model's native size). A dataset
given by `dataset_uri` has no image count before its prepare stage; its estimate counts the concept
steps only.

The service learns concepts in time slices (a learn shard each, resuming the last one's checkpoint):
the slices run exactly the concept steps of one uninterrupted run, so the cost is the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from diffii_core.params import JobParams

REFERENCE_RESOLUTION = 512


def images_for_class(params: JobParams, n_real: int) -> int:
    """Output count for a class of n_real images: int(expansion * N_c), as the method specifies."""
    # The epsilon keeps 0.29 * 100 at 29: binary floats land just under whole numbers.
    return math.floor(params.expansion * n_real + 1e-9)


def borrowed_count(params: JobParams, class_images: Sequence[int], index: int) -> int:
    """How many of the other classes' images fill class `index`'s inversion pool up to fill_pool_to:
    no more than the other classes hold (they are drawn without replacement)."""
    wanted = params.fill_pool_to - class_images[index]
    if wanted <= 0:
        return 0
    return min(wanted, sum(class_images) - class_images[index])


@dataclass(frozen=True)
class ClassCount:
    """One class's numbers: its real images, the images to make, the images it borrows."""

    images: int
    generated: int
    borrowed: int


def class_counts(params: JobParams, class_images: Iterable[int]) -> list[ClassCount]:
    """Every class's `ClassCount`, from the real image count of each class (dataset order)."""
    counts = list(class_images)
    return [
        ClassCount(n, images_for_class(params, n), borrowed_count(params, counts, i))
        for i, n in enumerate(counts)
    ]


def job_cost(params: JobParams, class_images: Iterable[int]) -> float:
    """The estimate above; `class_images` is the real image count of each class (empty if unknown)."""
    method = params.spec
    plan = class_counts(params, class_images)
    images = sum(c.generated for c in plan)
    c = params.concepts
    learn = c.steps * c.batch_size * c.gradient_accumulation if method.needs_concepts else 0
    inversions = sum(c.images + c.borrowed for c in plan)
    invert = inversions * params.inversion_steps if method.inversion else 0
    scale = ((params.resolution or REFERENCE_RESOLUTION) / REFERENCE_RESOLUTION) ** 2
    return (learn + images * params.inference_steps + invert) * scale
