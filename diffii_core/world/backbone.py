"""The world's classifier backbone: a small transformers ResNet pretrained to tell the *pretraining*
species apart (the analogue of ImageNet pretraining: it never sees an evaluation species). `diffii
evaluate` fine-tunes it with a fresh head, exactly as it would a ResNet-50 a user downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import ResNetConfig, ResNetForImageClassification

from diffii_core.world import domain
from diffii_core.world.fit import TrainingProgress, cached, fit
from diffii_core.world.oracle import to_batch

CONFIG = {
    "num_channels": 3,
    "embedding_size": 32,
    "hidden_sizes": [32, 64, 128, 256],
    "depths": [1, 1, 1, 1],
    "layer_type": "basic",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
}


def _render(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    pool = domain.pretraining_species()
    rng = np.random.default_rng([seed, count, 11])
    images, labels = [], []
    for _ in range(count):
        k = int(rng.integers(len(pool)))
        images.append(domain.sample_image(pool[k], rng)[0])
        labels.append(k)
    return to_batch(images), torch.tensor(labels)


def train_backbone(
    work_dir: Path,
    out: Path,
    steps: int,
    *,
    seed: int = 0,
    batch: int = 64,
    progress: TrainingProgress | None = None,
) -> int:
    """Train on a seeded render of the pretraining species; save a transformers model directory."""
    x, y = cached(work_dir / f"backbone-data-{seed}.pt", lambda: _render(seed, 40_000))
    labels = [s.name for s in domain.pretraining_species()]
    config = ResNetConfig(
        **CONFIG,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetForImageClassification(config)

    def batch_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        flip = (torch.rand(batch, generator=g) < 0.5)[:, None, None, None]
        return F.cross_entropy(model(pixel_values=torch.where(flip, x[idx].flip(3), x[idx])).logits, y[idx])

    fit(model, x.shape[0], batch_loss, steps, seed=seed, name="backbone", batch=batch, progress=progress)
    xt, yt = _render(seed + 1, 2000)
    with torch.no_grad():
        acc = float((model(pixel_values=xt).logits.argmax(1) == yt).float().mean())
    model.config.update({"diffii_pretraining_accuracy": acc, "diffii_steps": steps, "diffii_seed": seed})
    model.save_pretrained(out, safe_serialization=True)
    return steps
