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

`method: "auto"` (`diffii_core.pipeline.choice`) learns the concepts once, then adds its choice and
counts the dearest candidate's share, as the choice is not known before it runs:

    cost(auto) = (concept steps x batch x accumulation
                  + sum over the K candidates of (N x denoising steps + N x inversion steps if it inverts)
                  + (K + 1) x N                             (VAE encodings of the scored images)
                  + max over the candidates of (images x denoising steps + inversions x inversion steps))
                 x (resolution / 512)^2

with N the real images (each candidate makes one image per real image to be scored) and K =
len(`diffii_core.candidates.CANDIDATES`); `choice_cost` is the middle two lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from diffii_core.candidates import CANDIDATES, candidate_params
from diffii_core.params import AUTO, JobParams

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


def _making(params: JobParams, class_images: Sequence[int]) -> int:
    """Denoising and inversion passes of the method's share, at 512 px."""
    plan = class_counts(params, class_images)
    images = sum(c.generated for c in plan) * params.inference_steps
    inversions = sum(c.images + c.borrowed for c in plan) * params.inversion_steps
    return images + (inversions if params.spec.inversion else 0)


def choice_cost(params: JobParams, class_images: Iterable[int]) -> float:
    """What `method: "auto"`'s choice adds (above): every candidate's scored share, one image per real
    image, and the VAE encodings of the images it scores; 0 for any other method."""
    if params.method != AUTO:
        return 0.0
    counts = list(class_images)
    shares = [candidate_params(params, c).model_copy(update={"expansion": 1.0}) for c in CANDIDATES]
    units = sum(_making(p, counts) for p in shares) + (len(CANDIDATES) + 1) * sum(counts)
    return units * _scale(params)


def _scale(params: JobParams) -> float:
    return ((params.resolution or REFERENCE_RESOLUTION) / REFERENCE_RESOLUTION) ** 2


def job_cost(params: JobParams, class_images: Iterable[int]) -> float:
    """The estimate above; `class_images` is the real image count of each class (empty if unknown)."""
    counts = list(class_images)
    c = params.concepts
    learn = c.steps * c.batch_size * c.gradient_accumulation if params.spec.needs_concepts else 0
    if params.method == AUTO:
        making = max(_making(candidate_params(params, k), counts) for k in CANDIDATES)
        return (learn + making) * _scale(params) + choice_cost(params, counts)
    return (learn + _making(params, counts)) * _scale(params)
