"""Out of GPU memory is not a failed job: the same work goes on in smaller batches.

No image depends on the batch it was made in (see `batch_invariance` and `images.run_padded`), so
when a batch does not fit, inversion and generation halve it and redo only what that batch would have
made; the bytes stay those of an undisturbed run. Concept learning splits its micro-batch instead
(training.py), which keeps the effective batch and every random draw. Halving stops at one: an
image that does not fit alone is a real failure and is raised.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from diffii_core.output.generated import GeneratedImage

log = logging.getLogger("diffii.oom")

T = TypeVar("T")
OnSmaller = Callable[[int, int], None]  # (the batch that did not fit, the one tried next)


def smaller_batch(batch_size: int, what: str, on_smaller: OnSmaller | None = None) -> int:
    """Half the batch that ran out of memory; call it after leaving the `except` block, so the
    failed attempt's tensors (held by the traceback) are freed before the cache is emptied."""
    import torch

    smaller = max(1, batch_size // 2)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    log.warning(
        "out of GPU memory: %s carries on in batches of %d instead of %d",
        what,
        smaller,
        batch_size,
        extra={"what": what, "batch_size": smaller, "failed_batch_size": batch_size},
    )
    if on_smaller is not None:
        on_smaller(batch_size, smaller)
    return smaller


def map_batches(
    run: Callable[[int, int], T],
    total: int,
    batch_size: int,
    what: str,
    on_smaller: OnSmaller | None = None,
) -> list[T]:
    """[run(lo, hi) for the batches of range(total)], halving the batch whenever one runs out of GPU
    memory and running that batch again; later batches keep the smaller size."""
    import torch

    results: list[T] = []
    lo = 0
    while lo < total:
        hi = min(total, lo + batch_size)
        try:
            results.append(run(lo, hi))
        except torch.OutOfMemoryError:
            if hi - lo <= 1:
                raise
        else:
            lo = hi
            continue
        batch_size = smaller_batch(hi - lo, what, on_smaller)
    return results


def generate_in_batches(
    make: Callable[[int, int, int], Iterator[GeneratedImage]],
    start: int,
    stop: int,
    batch_size: int,
    what: str,
    on_smaller: OnSmaller | None = None,
) -> Iterator[GeneratedImage]:
    """Images [start, stop) from make(start, stop, batch_size); when a batch runs out of GPU memory,
    again from the first image not yet handed over, in half the batch size. Images come in index
    order and each depends only on its index, so none is made twice or differs."""
    import torch  # here, not at the top: the method registry is read without torch

    next_index = start
    while next_index < stop:
        try:
            for image in make(next_index, stop, batch_size):
                next_index = image.index + 1
                yield image
            return
        except torch.OutOfMemoryError:
            if batch_size <= 1:
                raise
        batch_size = smaller_batch(batch_size, what, on_smaller)
