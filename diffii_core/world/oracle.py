"""The oracle: an attribute classifier that judges world images, real or generated.

A small CNN with one head per attribute (body, wing, crest, tail) and one for the background context,
trained on rendered images of every species (it is the measuring instrument, like a human annotator,
not a model under test). Shipped beside the world model; `diffii world check` requires it to get every
attribute of real held-out images right at least 95 % of the time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from diffii_core.atomic import atomic_write
from diffii_core.world import ORACLE_DIR, domain
from diffii_core.world.fit import TrainingProgress, cached, fit

HEADS: dict[str, tuple[str, ...]] = {
    **domain.ATTRIBUTES,
    "context": tuple(str(i) for i in range(len(domain.CONTEXTS))),
}


class Oracle(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        # Field marks are a few pixels wide at 32 px: full resolution first, then two small stages.
        self.features = nn.Sequential(
            *conv(3, 32),
            nn.MaxPool2d(2),
            *conv(32, 48),
            *conv(48, 48),
            nn.MaxPool2d(2),
            *conv(48, 96),
            *conv(96, 96),
            nn.MaxPool2d(2),
            *conv(96, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


def to_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    arr = np.stack(
        [np.asarray(im.convert("RGB").resize((domain.RESOLUTION,) * 2), dtype=np.float32) for im in images]
    )
    return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def render_labelled(
    seed: int, count: int, species: Sequence[domain.Species] | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`count` images of `species` (default: all) with their attribute and context labels."""
    pool = list(species or domain.all_species())
    rng = np.random.default_rng([seed, count])
    images, labels = [], {name: [] for name in HEADS}
    for _ in range(count):
        s = pool[int(rng.integers(len(pool)))]
        image, context = domain.sample_image(s, rng)
        images.append(image)
        for name, value in s.attributes.items():
            labels[name].append(HEADS[name].index(value))
        labels["context"].append(context)
    return to_batch(images), {k: torch.tensor(v) for k, v in labels.items()}


def train_oracle(
    work_dir: Path,
    out: Path,
    steps: int,
    *,
    seed: int = 0,
    batch: int = 64,
    progress: TrainingProgress | None = None,
) -> int:
    """Train on a seeded render of every species; writes `out/oracle.safetensors` and its accuracy."""
    x, y = cached(work_dir / f"oracle-data-{seed}.pt", lambda: render_labelled(seed, 40_000))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Oracle()

    def batch_loss(idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        logits = model(x[idx])
        return sum(F.cross_entropy(logits[k], y[k][idx]) for k in HEADS)  # type: ignore[return-value]

    fit(model, x.shape[0], batch_loss, steps, seed=seed, name="oracle", batch=batch, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out / "oracle.safetensors"))
    report = evaluate_oracle(model, seed=seed + 1)
    with atomic_write(out / "oracle.json") as fp:
        fp.write(json.dumps({"steps": steps, "seed": seed, **report}, indent=2).encode())
    return steps


def load_oracle(directory: Path = ORACLE_DIR) -> Oracle:
    model = Oracle()
    model.load_state_dict(load_file(str(directory / "oracle.safetensors")))
    return model.eval()


@torch.no_grad()
def predict(model: Oracle, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Predicted value indices per head for a batch in [-1, 1]."""
    outs = [model(chunk) for chunk in pixels.split(256)]
    return {k: torch.cat([o[k] for o in outs]).argmax(1) for k in HEADS}


def attributes_right(pred: dict[str, torch.Tensor], species: Sequence[domain.Species]) -> torch.Tensor:
    """Per image: are all four attributes those of `species[i]`?"""
    ok = torch.ones(len(species), dtype=torch.bool)
    for name in domain.ATTRIBUTES:
        want = torch.tensor([HEADS[name].index(s.attributes[name]) for s in species])
        ok &= pred[name] == want
    return ok


def attribute_accuracy(pred: dict[str, torch.Tensor], species: Sequence[domain.Species]) -> dict[str, float]:
    """Share of images with each attribute of `species[i]` right, and with all four ("all")."""
    report = {}
    for name in domain.ATTRIBUTES:
        want = torch.tensor([HEADS[name].index(s.attributes[name]) for s in species])
        report[name] = float((pred[name] == want).float().mean())
    report["all"] = float(attributes_right(pred, species).float().mean())
    return report


def evaluate_oracle(model: Oracle, *, seed: int, count: int = 4000) -> dict[str, float]:
    """Accuracy on fresh real images (a seed the oracle never trained on)."""
    x, y = render_labelled(seed + 10_000, count)
    pred = predict(model, x)
    report = {f"{k}_accuracy": float((pred[k] == y[k]).float().mean()) for k in HEADS}
    all_right = torch.ones(count, dtype=torch.bool)
    for name in domain.ATTRIBUTES:
        all_right &= pred[name] == y[name]
    report["all_attributes_accuracy"] = float(all_right.float().mean())
    return report
