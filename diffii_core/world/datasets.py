"""World datasets in ImageFolder layout: few-shot, long-tailed and waterbirds-style splits of
evaluation species, readable as they are by `diffii augment`, the service and `diffii evaluate`.

    OUT/train/<species>/<NNN>.png   the training set (the user's "small labelled dataset")
    OUT/test/<species>/<NNN>.png    a larger test set of the same classes
    OUT/classes.json                each class's attributes, description, group and image counts
    OUT/backgrounds.json            each image's context ("train/<species>/000.png" -> context index)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffii_core.atomic import atomic_write
from diffii_core.world import domain

if TYPE_CHECKING:
    from diffii_core.evaluate.data import LabelledImages


@dataclass(frozen=True)
class WorldDatasetSpec:
    classes: int = 10
    shots: int = 5
    seed: int = 0
    test_per_class: int = 50
    imbalance: float | None = None  # long tail: counts from `shots` down to shots / imbalance
    waterbirds: float | None = None  # share of training images on their group's background

    def validate(self) -> None:
        n_eval = len(domain.evaluation_species())
        if not 2 <= self.classes <= n_eval:
            raise ValueError(
                f"classes must be between 2 and {n_eval} (the evaluation species), got {self.classes}"
            )
        if self.shots < 1:
            raise ValueError(f"shots must be >= 1, got {self.shots}")
        if self.test_per_class < 1:
            raise ValueError(f"test_per_class must be >= 1, got {self.test_per_class}")
        if self.imbalance is not None and self.imbalance < 1:
            raise ValueError(f"imbalance must be >= 1, got {self.imbalance}")
        if self.waterbirds is not None and not 0.5 <= self.waterbirds <= 1:
            raise ValueError(f"waterbirds must be in [0.5, 1], got {self.waterbirds}")
        if self.imbalance is not None and self.waterbirds is not None:
            raise ValueError("choose one of imbalance and waterbirds")


def pick_classes(count: int, seed: int) -> list[domain.Species]:
    """A fine-grained set: the `count` evaluation species nearest to a seeded anchor species, so most
    classes have a neighbour that differs in one or two attributes (ties broken by the seed)."""
    pool = domain.evaluation_species()
    rng = np.random.default_rng([seed, 7])
    anchor = pool[int(rng.integers(len(pool)))]
    ties = rng.permutation(len(pool))
    order = sorted(range(len(pool)), key=lambda i: (anchor.distance(pool[i]), ties[i]))
    return sorted((pool[i] for i in order[:count]), key=lambda s: s.index)


def long_tail_counts(classes: int, shots: int, imbalance: float) -> list[int]:
    """Exponentially decaying counts, `shots` for the head class down to shots / imbalance (at least 1)."""
    if classes == 1:
        return [shots]
    return [max(1, round(shots * imbalance ** (-c / (classes - 1)))) for c in range(classes)]


def _contexts(group: str | None, rate: float | None, rng: np.random.Generator) -> int:
    """A context: uniform, or (waterbirds) the group's own background with probability `rate`."""
    if group is None or rate is None:
        return int(rng.integers(len(domain.CONTEXTS)))
    own, other = (
        (domain.WATER_CONTEXTS, domain.LAND_CONTEXTS)
        if group == "water"
        else (domain.LAND_CONTEXTS, domain.WATER_CONTEXTS)
    )
    choices = own if rng.random() < rate else other
    return int(choices[int(rng.integers(len(choices)))])


def write_world_dataset(out: Path, spec: WorldDatasetSpec) -> dict[str, Any]:
    """Write the dataset under `out` (which must not hold one already); returns the classes.json body."""
    spec.validate()
    out = Path(out)
    if (out / "train").exists() or (out / "test").exists():
        raise FileExistsError(f"{out} already holds a dataset (train/ or test/ exists)")
    species = pick_classes(spec.classes, spec.seed)
    counts = (
        long_tail_counts(len(species), spec.shots, spec.imbalance)
        if spec.imbalance
        else [spec.shots] * len(species)
    )
    half = len(species) // 2
    groups = [
        ("water" if i < half else "land") if spec.waterbirds is not None else None
        for i in range(len(species))
    ]
    backgrounds: dict[str, int] = {}
    for split in ("train", "test"):
        for c, s in enumerate(species):
            n = counts[c] if split == "train" else spec.test_per_class
            for i in range(n):
                rng = domain.image_rng(spec.seed, 1 if split == "train" else 2, s.index, i)
                if split == "test" and groups[c] is not None:
                    # Balanced test: half on water, half on land, whatever the class's group.
                    pool = domain.WATER_CONTEXTS if i % 2 == 0 else domain.LAND_CONTEXTS
                    context = int(pool[int(rng.integers(len(pool)))])
                else:
                    context = _contexts(groups[c], spec.waterbirds, rng)
                image = domain.render(s, domain.draw_pose(rng, context))
                rel = f"{split}/{s.name}/{i:03d}.png"
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path, format="PNG")
                backgrounds[rel] = context
    body = {
        "metaclass": domain.METACLASS,
        "spec": spec.__dict__,
        "contexts": list(domain.CONTEXTS),
        "water_contexts": list(domain.WATER_CONTEXTS),
        "classes": [
            {
                "name": s.name,
                "attributes": s.attributes,
                "description": s.description(),
                "train_images": counts[c],
                "test_images": spec.test_per_class,
                **({"group": groups[c]} if groups[c] else {}),
            }
            for c, s in enumerate(species)
        ],
    }
    for name, content in (("classes.json", body), ("backgrounds.json", backgrounds)):
        with atomic_write(out / name) as fp:
            fp.write(json.dumps(content, indent=1, sort_keys=True).encode())
    return body


def waterbirds_groups(test_dir: Path) -> Callable[[LabelledImages], list[str]] | None:
    """The test images' groups of a waterbirds-style world set ("water bird on land", ...), read from
    classes.json and backgrounds.json beside `test_dir`, for worst-group accuracy; None for any other set."""
    root = Path(test_dir).parent
    if not (root / "classes.json").exists() or not (root / "backgrounds.json").exists():
        return None
    classes = json.loads((root / "classes.json").read_text())
    group_of = {c["name"]: c.get("group") for c in classes["classes"]}
    if not any(group_of.values()):
        return None
    water = set(classes["water_contexts"])
    backgrounds = json.loads((root / "backgrounds.json").read_text())
    split = Path(test_dir).name

    def groups(test: LabelledImages) -> list[str]:
        out = []
        for path in test.paths:
            where = "water" if backgrounds[f"{split}/{path}"] in water else "land"
            out.append(f"{group_of[path.split('/')[0]]} bird on {where}")
        return out

    return groups
