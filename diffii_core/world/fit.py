"""The training loop shared by the world's two classifiers (the oracle and the backbone): a seeded render
of images cached in the work folder, AdamW with one-cycle learning rates, one generator per step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffii_core.seeding import generator

# progress(leg, step, steps, metrics): what every world training loop reports (the classifiers here,
# the world model in `train.py`), one type for all of them.
TrainingProgress = Callable[[str, int, int, dict[str, float]], None]


def cached(path: Path, make: Callable[[], Any]) -> Any:
    """`make()`'s result, rendered once and kept at `path` (a work file, never shipped)."""
    if path.exists():
        return torch.load(path)
    value = make()
    torch.save(value, path)
    return value


def fit(
    model: nn.Module,
    size: int,
    batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    steps: int,
    *,
    seed: int,
    name: str,
    batch: int,
    progress: TrainingProgress | None = None,
) -> None:
    """`steps` optimiser steps on random batches of indices into a data set of `size` items."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for step in range(steps):
        g = generator(seed, name, step)
        idx = torch.randint(size, (batch,), generator=g)
        loss = batch_loss(idx, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(name, step + 1, steps, {"loss": loss.item()})
    model.eval()
