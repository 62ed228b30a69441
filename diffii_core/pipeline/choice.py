"""`method: "auto"`: diffii's own choice of recipe for a dataset, from the job's real images only.

After the concepts are learned (once: every candidate of `diffii_core.candidates` reads the same ones),
each candidate makes a small share, one image per real image (indices 0 .. N_c - 1 of each class, so
fixed by the job seed), and is scored by leave-one-real-image-out accuracy: for each real image i, a
classifier (`real_filter.fit_features`: logistic regression over the model's pooled VAE features, as
Real-Filter's) is fitted on the other real images plus every synthetic image whose `sources` do not name
i, and predicts i. The candidate with the most held-out images right is chosen, the earlier one on a tie;
the real images alone give the reference score. The job's share is then made with the chosen candidate
(`Choice.params`), and job.json's `choice` records every score. What it costs:
`diffii_core.planning.choice_cost`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from diffii_core.candidates import CANDIDATES, Candidate, candidate_params
from diffii_core.dataset import Dataset
from diffii_core.learning.concepts import Concepts, concepts_applied
from diffii_core.methods.real_filter import fit_features, image_features
from diffii_core.models import LoadedModel
from diffii_core.params import AUTO, JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.steps import ClassPlan
from diffii_core.planning import choice_cost

if TYPE_CHECKING:
    import torch

RULE = (
    "leave-one-real-image-out accuracy of logistic regression over the model's pooled VAE features: "
    "each real image predicted by a classifier of the other real images and of every synthetic image "
    "whose sources do not name it; ties go to the earlier candidate"
)


@dataclass(frozen=True)
class Scored:
    """Features of scored images: `names` are a real image's own path, or a synthetic image's sources."""

    features: torch.Tensor  # [N, d] float64
    labels: list[int]
    names: list[frozenset[str]]


@dataclass(frozen=True)
class Choice:
    params: JobParams  # the chosen candidate's: the job's share is made with these
    record: dict[str, Any]  # job.json's "choice"

    @property
    def chosen(self) -> str:
        return str(self.record["chosen"])


def held_out_probabilities(
    real: Scored, synthetic: Scored | None, classes: int, resolution: int = 0
) -> Iterator[torch.Tensor]:
    """For each real image in turn, the class probabilities ([C]) of a classifier fitted without it and
    without every synthetic image whose sources name it: the one place that decides what a fold sees."""
    import torch

    for i, names in enumerate(real.names):
        keep_real = [j for j in range(len(real.names)) if j != i]
        x, y = [real.features[keep_real]], [real.labels[j] for j in keep_real]
        if synthetic is not None:
            keep = [k for k, sources in enumerate(synthetic.names) if not sources & names]
            x.append(synthetic.features[keep])
            y += [synthetic.labels[k] for k in keep]
        classifier = fit_features(torch.cat(x), torch.tensor(y, dtype=torch.long), classes, resolution, "")
        yield classifier.probabilities(real.features[i : i + 1])[0]


def leave_one_out(real: Scored, synthetic: Scored | None, classes: int, resolution: int = 0) -> int:
    """How many real images a classifier fitted without them (and without every synthetic image whose
    sources name them) predicts right."""
    held_out = held_out_probabilities(real, synthetic, classes, resolution)
    return sum(int(p.argmax()) == label for p, label in zip(held_out, real.labels, strict=True))


def _score(correct: int, total: int) -> dict[str, Any]:
    return {"correct": correct, "score": round(correct / total, 6) if total else 0.0}


def choose(
    model: LoadedModel,
    concepts: Concepts | None,
    dataset: Dataset,
    params: JobParams,
    plans: Sequence[ClassPlan],
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Choice:
    """Score every candidate on the job's real images and return the chosen one (above). Deterministic:
    the same job, model and concepts choose the same candidate with the same scores in every process."""
    import torch

    if params.method != AUTO:
        raise ValueError(f"only a job of method {AUTO!r} chooses a recipe, not {params.method!r}")
    resolution, geometry = params.resolution or model.resolution, params.image_geometry
    class_names = [p.name for p in plans]
    labels = [c.index for c in dataset.classes for _ in c.images]
    with concepts_applied(model, concepts):
        opened = [[item.open() for item in c.images] for c in dataset.classes]
        real = Scored(
            torch.cat([image_features(model, images, resolution, geometry) for images in opened]),
            labels,
            [frozenset([item.path]) for c in dataset.classes for item in c.images],
        )
        results = []
        for candidate in CANDIDATES:
            made = _share(model, concepts, dataset, params, plans, class_names, candidate,
                          batch_size=batch_size, progress=progress, should_stop=should_stop)  # fmt: skip
            features = [
                image_features(model, images, resolution, geometry) for images, _, _ in made if images
            ]
            synthetic = Scored(
                torch.cat(features),
                [label for _, ys, _ in made for label in ys],
                [sources for _, _, ss in made for sources in ss],
            )
            results.append(leave_one_out(real, synthetic, len(class_names), resolution))
        reference = leave_one_out(real, None, len(class_names), resolution)
    best = max(range(len(CANDIDATES)), key=lambda k: (results[k], -k))
    total = len(real.labels)
    record = {
        "method": AUTO,
        "candidates": [
            {"name": c.name, "params": dict(c.overrides), **_score(results[k], total)}
            for k, c in enumerate(CANDIDATES)
        ],
        "real_only": _score(reference, total),
        "chosen": CANDIDATES[best].name,
        "images_per_candidate": total,
        "extra_cost": choice_cost(params, [len(c.images) for c in dataset.classes]),
        "rule": RULE,
    }
    return Choice(candidate_params(params, CANDIDATES[best]), record)


def _share(
    model: LoadedModel,
    concepts: Concepts | None,
    dataset: Dataset,
    params: JobParams,
    plans: Sequence[ClassPlan],
    class_names: list[str],
    candidate: Candidate,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> list[tuple[list[Any], list[int], list[frozenset[str]]]]:
    """The candidate's scored share, per class: its images (one per real image), labels and sources."""
    from PIL import Image

    cparams = candidate_params(params, candidate)
    spec = cparams.spec
    made = []
    for cls, plan in zip(dataset.classes, plans, strict=True):
        share = replace(plan, generated=plan.images, borrowed=[])
        pool = steps.invert(spec, model, concepts, dataset, share, cparams, batch_size=batch_size)
        references = steps.reference_images(spec, cls)
        images, labels, sources = [], [], []
        for image in steps.generate(
            model, cparams, share, class_names, start=0, stop=share.generated, batch_size=batch_size,
            concepts=concepts, pool=pool, references=references, should_stop=should_stop,
        ):  # fmt: skip
            images.append(Image.open(io.BytesIO(image.png)).convert("RGB"))
            labels.append(int(image.metadata["label_index"]))
            sources.append(frozenset(image.metadata["sources"]))
            if progress is not None:
                progress(1)
        made.append((images, labels, sources))
    return made
