"""real-filter: real-guidance images kept only where a classifier trained on the real set predicts
their class. A rejected image is redrawn with the next attempt's seed, up to `filter_attempts`; when none
passes, the best-scoring attempt is kept and marked, so every class still gets its count.

The classifier (`fit_real_filter`) is multinomial logistic regression over the model's own VAE features
(the posterior mean, pooled to 4x4), fitted full-batch in float64 so the same data gives the same weights
in every process. The registry reads `SPEC` wherever a job is checked (the API too), so torch is imported
only when the classifier is fitted or images are made."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffii_core.errors import Cancelled
from diffii_core.methods.img2img import check_references, finish, plans_for, prompt_text, render
from diffii_core.methods.spec import MethodSpec, ShareRequest

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from diffii_core.models import LoadedModel
    from diffii_core.output.generated import GeneratedImage

POOLED = 4
STEPS = 300


@dataclass(frozen=True)
class FeatureClassifier:
    mean: torch.Tensor  # [d]
    std: torch.Tensor  # [d]
    weight: torch.Tensor  # [C, d]
    bias: torch.Tensor  # [C]
    resolution: int
    geometry: str

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """[N, C]; each row from its own features only (elementwise, no matmul whose blocking could
        change with N), so a score does not depend on which images were scored with it."""
        import torch

        z = (features - self.mean) / self.std
        logits = (z[:, None, :] * self.weight[None]).sum(-1) + self.bias
        return torch.softmax(logits, dim=-1)


def image_features(
    model: LoadedModel, images: Sequence[Image.Image], resolution: int, geometry: str
) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    from diffii_core.images import encode_images, fit_square, to_tensor

    pixels = torch.stack([to_tensor(fit_square(im, resolution, geometry)) for im in images])
    latents = encode_images(model, pixels)
    return F.adaptive_avg_pool2d(latents, POOLED).flatten(1).double()


def fit_real_filter(
    model: LoadedModel, classes: Sequence[Sequence[Image.Image]], resolution: int, geometry: str
) -> FeatureClassifier:
    """Fit on every image of every class (class index = position in `classes`)."""
    import torch

    features = torch.cat([image_features(model, images, resolution, geometry) for images in classes])
    labels = torch.cat([torch.full((len(images),), c, dtype=torch.long) for c, images in enumerate(classes)])
    return fit_features(features, labels, len(classes), resolution, geometry)


def fit_features(
    features: torch.Tensor, labels: torch.Tensor, classes: int, resolution: int, geometry: str
) -> FeatureClassifier:
    """The classifier of `features` ([N, d], float64) with class indices `labels` ([N]) over `classes`
    classes, standardised by the features it is fitted on (`method: "auto"` fits one per held-out image)."""
    import torch
    import torch.nn.functional as F

    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    z = (features - mean) / std
    weight = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # A little L2 keeps the fit finite when the real set is separable (it usually is: few images).
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return FeatureClassifier(mean, std, weight.detach(), bias.detach(), resolution, geometry)


def generate(spec: MethodSpec, req: ShareRequest) -> Iterator[GeneratedImage]:
    from PIL import Image

    check_references(spec, req)
    classifier = req.classifier
    if classifier is None:
        raise ValueError("method 'real-filter' needs a classifier trained on the real set")
    prompts = {req.label_index: prompt_text(spec, req, req.label_index)}
    for first in range(req.start, req.stop, req.batch_size):
        if req.should_stop is not None and req.should_stop():
            raise Cancelled(f"stopped before image {first} of class {req.class_name!r}")
        pending = list(range(first, min(req.stop, first + req.batch_size)))
        best: dict[int, tuple] = {}
        tries = dict.fromkeys(pending, 0)
        for attempt in range(req.params.filter_attempts):
            plans = plans_for(spec, req, pending, attempt)
            arrays = render(spec, req, plans, prompts)
            images = [Image.fromarray(a) for a in arrays]
            probs = classifier.probabilities(
                image_features(req.model, images, classifier.resolution, classifier.geometry)
            )
            for plan, array, row in zip(plans, arrays, probs, strict=True):
                score = float(row[req.label_index])
                passed = int(row.argmax()) == req.label_index
                tries[plan.index] += 1
                # A passing draw always wins; among failures, the best score is kept.
                if plan.index not in best or passed or score > best[plan.index][0]:
                    best[plan.index] = (score, passed, plan, array)
            pending = [i for i in pending if not best[i][1]]
            if not pending:
                break
        for index in sorted(best):
            score, passed, plan, array = best[index]
            extra = {"filter_score": round(score, 6), "filter_passed": passed}
            extra["filter_attempts"] = tries[index]
            yield finish(spec, req, plan, array, prompts[req.label_index], extra)


SPEC = MethodSpec(
    name="real-filter",
    summary="real-guidance images kept where a classifier trained on the real set agrees with the label",
    generate=generate,
    concepts="none",
    prompt="name",
    references=True,
    classifier=True,
    strengths=(0.5,),
)
