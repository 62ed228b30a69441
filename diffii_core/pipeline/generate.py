"""Images of one class by the job's method (step 5; Diff-II's steps 4 and 5): the one entry point that
`augment`, the worker and the benchmarks call, through `steps.generate`. It checks the one capability
every method's generation shares, learned concepts, and that they are the ones in scope on the model,
then calls the method's own `generate` (its module in `diffii_core.methods`), which checks the rest of
what it uses (Diff-II its inversion pool, the img2img methods their references, Real-Filter its
classifier)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from diffii_core.learning.concepts import Concepts, scope_key
from diffii_core.methods import ShareRequest
from diffii_core.models import LoadedModel
from diffii_core.oom import generate_in_batches
from diffii_core.output.generated import GeneratedImage
from diffii_core.params import JobParams

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from diffii_core.methods.real_filter import FeatureClassifier


def generate_share(
    model: LoadedModel,
    concepts: Concepts | None,
    pool: torch.Tensor | None,
    *,
    class_name: str,
    label_index: int,
    class_names: list[str],
    source_names: list[str],
    params: JobParams,
    own_images: int | None = None,
    start: int,
    stop: int,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    references: Sequence[Image.Image] | None = None,
    classifier: FeatureClassifier | None = None,
) -> Iterator[GeneratedImage]:
    """Images [start, stop) of one class by params.method. Call it inside
    `concepts_applied(model, concepts)` (None for the base-model methods). Diff-II needs the class's
    inversion `pool`; img2img methods the class's images as `references` (aligned with source_names);
    real-filter a `classifier` trained on the real set. `own_images`: how many of `source_names` (and
    of the pool's rows) are the class's own; the rest are borrowed from other classes (all by default)."""
    spec = params.spec
    if spec.needs_concepts and concepts is None:
        raise ValueError(f"method {spec.name!r} needs learned concepts")
    in_scope = concepts if spec.needs_concepts else None
    if model.in_use != scope_key(in_scope):
        raise RuntimeError(
            f"{spec.name} must run inside concepts_applied(model, "
            f"{'its concepts' if spec.needs_concepts else 'None'})"
        )

    def make(first: int, end: int, size: int) -> Iterator[GeneratedImage]:
        request = ShareRequest(
            model=model, params=params, class_name=class_name, label_index=label_index,
            class_names=class_names, source_names=source_names, start=first, stop=end, concepts=in_scope,
            own_images=own_images,
            pool=pool, references=references, classifier=classifier, batch_size=size,
            should_stop=should_stop,
        )  # fmt: skip
        return spec.generate(spec, request)

    # Out of GPU memory, the rest of the share is made in half the batch (oom.py): no image changes.
    yield from generate_in_batches(make, start, stop, batch_size, f"generating class {class_name!r}")
