"""The work a job asks for, estimated from its parameters and its dataset before it runs.

One unit is one forward (or forward and backward) pass of the model at 512 x 512 pixels:

    cost = (concept steps x batch x accumulation      (0 for methods that learn no concept)
            + images x denoising steps
            + inversions x inversion steps)            (0 for methods without an inversion pool)
           x (resolution / 512)^2

where images = ceil(expansion x real images) summed per class, inversions = real images plus the
images borrowed to fill small classes' pools (fill_pool_to), and
resolution is the job's own, or 512 when it names none (the API does not load models, so it cannot
read a model's native size). A dataset given by `dataset_uri` has no image count before its prepare
stage; its estimate counts the concept steps only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from diffii_core.params import JobParams

REFERENCE_RESOLUTION = 512


def job_cost(params: JobParams, class_images: Iterable[int]) -> float:
    """The estimate above; `class_images` is the real image count of each class (empty if unknown)."""
    from diffii_core.methods import METHODS

    method = METHODS[params.method]
    counts = list(class_images)
    real = sum(counts)
    images = sum(math.ceil(params.expansion * n) for n in counts)
    c = params.concepts
    learn = c.steps * c.batch_size * c.gradient_accumulation if method.needs_concepts else 0
    borrowed = sum(max(0, params.fill_pool_to - n) for n in counts)
    invert = (real + borrowed) * params.inversion_steps if method.inversion else 0
    scale = ((params.resolution or REFERENCE_RESOLUTION) / REFERENCE_RESOLUTION) ** 2
    return (learn + images * params.inference_steps + invert) * scale
