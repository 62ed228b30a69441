"""The published downstream protocol: while a classifier trains on the real images, each real sample is
replaced, with probability p, by a synthetic image of its class carrying that image's (soft) label.
Long-tailed runs instead draw the synthetic image's class with probability proportional to
1 / (n_c + 1), so tail classes get most of the synthetic images (METHOD.md, "Downstream use").

Every draw comes from a generator the caller seeds per (seed, epoch), so a run is reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SyntheticPool:
    """Synthetic images of one archive: pixels [N, 3, H, W], their folder class [N] and their target
    distribution [N, C] (one-hot for hard labels, the archive's soft label otherwise, normalised)."""

    pixels: torch.Tensor
    classes: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        n = self.pixels.shape[0]
        if self.classes.shape != (n,) or self.targets.shape[0] != n:
            raise ValueError("pixels, classes and targets must have one row per synthetic image")

    def by_class(self, num_classes: int) -> list[torch.Tensor]:
        return [torch.nonzero(self.classes == c).flatten() for c in range(num_classes)]


@dataclass(frozen=True)
class Replacement:
    """How a batch of real samples is mixed with synthetic ones."""

    probability: float = 0.5
    long_tail: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"replacement probability must be in [0, 1], got {self.probability}")


def class_weights_long_tail(real_counts: list[int]) -> torch.Tensor:
    """P(class c) ∝ 1 / (n_c + 1): the rarer the class, the more synthetic images it gets."""
    w = 1.0 / (torch.tensor(real_counts, dtype=torch.float64) + 1.0)
    return w / w.sum()


def mix_batch(
    real_pixels: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
    pool: SyntheticPool | None,
    rule: Replacement,
    real_counts: list[int],
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pixels, target distributions [B, C], replaced mask [B]) for one training batch.

    A sample is replaced only when its drawn class has synthetic images; otherwise it stays real."""
    batch = real_pixels.shape[0]
    targets = torch.nn.functional.one_hot(real_labels, num_classes).to(torch.float32)
    replaced = torch.zeros(batch, dtype=torch.bool)
    if pool is None or rule.probability == 0.0 or pool.pixels.shape[0] == 0:
        return real_pixels, targets, replaced
    members = pool.by_class(num_classes)
    draws = torch.rand(batch, generator=gen) < rule.probability
    if rule.long_tail:
        wanted = torch.multinomial(
            class_weights_long_tail(real_counts), batch, replacement=True, generator=gen
        )
    else:
        wanted = real_labels
    picks = torch.rand(batch, generator=gen)
    pixels = real_pixels.clone()
    for i in range(batch):
        candidates = members[int(wanted[i])]
        if not draws[i] or candidates.numel() == 0:
            continue
        j = int(candidates[int(picks[i] * candidates.numel()) % candidates.numel()])
        pixels[i] = pool.pixels[j]
        targets[i] = pool.targets[j]
        replaced[i] = True
    return pixels, targets, replaced


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (a one-hot row is the usual hard-label loss)."""
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
