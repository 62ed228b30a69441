"""A small classifier trained on the real set, for Real-Filter: multinomial logistic regression over the
model's own VAE features (the posterior mean, pooled to 4x4), fitted full-batch in float64 so the same
data gives the same weights in every process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from diffii_core.images import encode_images, fit_square, to_tensor
from diffii_core.models import LoadedModel

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
        z = (features - self.mean) / self.std
        logits = (z[:, None, :] * self.weight[None]).sum(-1) + self.bias
        return torch.softmax(logits, dim=-1)


def image_features(
    model: LoadedModel, images: Sequence[Image.Image], resolution: int, geometry: str
) -> torch.Tensor:
    pixels = torch.stack([to_tensor(fit_square(im, resolution, geometry)) for im in images])
    latents = encode_images(model, pixels)
    return F.adaptive_avg_pool2d(latents, POOLED).flatten(1).double()


def train_classifier(
    model: LoadedModel, classes: Sequence[Sequence[Image.Image]], resolution: int, geometry: str
) -> FeatureClassifier:
    """Fit on every image of every class (class index = position in `classes`)."""
    features = torch.cat([image_features(model, images, resolution, geometry) for images in classes])
    labels = torch.cat([torch.full((len(images),), c, dtype=torch.long) for c, images in enumerate(classes)])
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    z = (features - mean) / std
    weight = torch.zeros(len(classes), z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=STEPS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # A little L2 keeps the fit finite when the real set is separable (it usually is: few images).
        loss = F.cross_entropy(z @ weight.T + bias, labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return FeatureClassifier(mean, std, weight.detach(), bias.detach(), resolution, geometry)
