"""Fine-tune an image classifier (a transformers image-classification model from a local directory) on
real images, mixed with synthetic ones by the published protocol, and measure it on a test set."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from diffii_core.errors import ModelError
from diffii_core.evaluate.data import LabelledImages
from diffii_core.evaluate.protocol import Replacement, SyntheticPool, mix_batch, soft_cross_entropy
from diffii_core.seeding import derive_seed, generator


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    resolution: int = 32


def load_backbone(directory: str | Path, num_classes: int, seed: int) -> nn.Module:
    """A pretrained image-classification model with a fresh head of `num_classes` (seeded)."""
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    path = Path(directory)
    if not (path / "config.json").exists():
        raise ModelError(f"backbone {directory} is not a transformers model directory (no config.json)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "head") % 2**31)
        # The new head never matches the pretrained one; transformers reports that at length each time.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForImageClassification.from_pretrained(
                str(path), num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"backbone {directory} could not be loaded: {exc}") from exc
        finally:
            hf_logging.set_verbosity(verbosity)
    return model


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random 2-pixel translation (reflect padding), per image."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    pad = 2
    padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (x.shape[0],), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (x.shape[0],), generator=gen)
    h, w = x.shape[2:]
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(x.shape[0])])


def train_downstream_classifier(
    backbone: str | Path,
    train: LabelledImages,
    pool: SyntheticPool | None,
    rule: Replacement,
    config: TrainConfig,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> nn.Module:
    """Fine-tune on `train`, each real sample replaced per `rule` by a synthetic one from `pool`."""
    num_classes = len(train.class_names)
    model = load_backbone(backbone, num_classes, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    n = train.labels.shape[0]
    steps_per_epoch = max(1, -(-n // config.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    counts = train.counts()
    model.train()
    for epoch in range(config.epochs):
        gen = generator(seed, "epoch", epoch)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            pixels, targets, _ = mix_batch(
                train.pixels[idx], train.labels[idx], num_classes, pool, rule, counts, gen
            )
            logits = model(pixel_values=_augment(pixels, gen)).logits
            loss = soft_cross_entropy(logits, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        if progress is not None:
            progress(1)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, pixels: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model(pixel_values=chunk).logits.argmax(1) for chunk in pixels.split(batch_size)])


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred == labels).float().mean()) if labels.numel() else 0.0


def worst_group_accuracy(pred: torch.Tensor, labels: torch.Tensor, groups: list[str]) -> float:
    """The lowest accuracy over the groups of the test images (e.g. "water bird on land")."""
    names = sorted(set(groups))
    index = torch.tensor([names.index(g) for g in groups])
    return min(accuracy(pred[index == i], labels[index == i]) for i in range(len(names)))
