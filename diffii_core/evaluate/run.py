"""`diffii evaluate`: train a classifier on the real images alone and on real plus each synthetic
archive, over several seeds, and report top-1 accuracy (mean ± 95 % interval), the gain over real only
and, where the test images have groups, the worst-group accuracy."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffii_core.evaluate.classifier import (
    TrainConfig,
    accuracy,
    predict,
    train_downstream_classifier,
    worst_group_accuracy,
)
from diffii_core.evaluate.data import LabelledImages, check_same_classes, load_archive, load_split
from diffii_core.evaluate.protocol import Replacement, SyntheticPool

# Two-sided 97.5 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]  # fmt: skip
LONG_TAIL_RATIO = 10.0


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95 % t-interval of the mean (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    df = len(values) - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.96
    return t * statistics.stdev(values) / math.sqrt(len(values))


@dataclass
class Entry:
    method: str
    accuracies: list[float] = field(default_factory=list)
    worst_groups: list[float] = field(default_factory=list)

    def summary(self, baseline: float | None) -> dict[str, Any]:
        mean = statistics.fmean(self.accuracies)
        out: dict[str, Any] = {
            "method": self.method,
            "accuracy_mean": mean,
            "accuracy_ci95": ci95(self.accuracies),
            "accuracies": self.accuracies,
            "gain": 0.0 if baseline is None else mean - baseline,
        }
        if self.worst_groups:
            out["worst_group"] = statistics.fmean(self.worst_groups)
            out["worst_group_ci95"] = ci95(self.worst_groups)
        return out


def evaluate(
    train_source: str | Path,
    test_source: str | Path,
    archives: Sequence[str | Path],
    *,
    backbone: str | Path,
    seeds: int = 3,
    config: TrainConfig | None = None,
    probability: float = 0.5,
    long_tail: bool | None = None,
    test_groups: Callable[[LabelledImages], list[str] | None] | None = None,
    progress: Callable[[str, int], Callable[[int], None]] | None = None,
) -> dict[str, Any]:
    """The whole comparison; returns {"entries": [...], "settings": {...}} (first entry: real only)."""
    config = config or TrainConfig()
    train = load_split(train_source, config.resolution, "training set")
    test = load_split(test_source, config.resolution, "test set")
    check_same_classes(train, test)
    loaded = [load_archive(archive, train.class_names, config.resolution) for archive in archives]
    methods = [method for method, _pool in loaded]
    pools: list[tuple[str, SyntheticPool | None]] = [("real only", None)]
    for archive, (method, pool) in zip(archives, loaded, strict=True):
        # Two archives of one method (two recipes, two seeds) must not read as one line twice.
        pools.append((f"{method} ({Path(archive).name})" if methods.count(method) > 1 else method, pool))
    counts = train.counts()
    if long_tail is None:
        long_tail = max(counts) >= LONG_TAIL_RATIO * min(counts)
    rule = Replacement(probability=probability, long_tail=long_tail)
    groups = test_groups(test) if test_groups else None
    entries = []
    for name, pool in pools:
        entry = Entry(name)
        tick = progress(name, seeds * config.epochs) if progress else None
        for seed in range(seeds):
            model = train_downstream_classifier(backbone, train, pool, rule, config, seed, progress=tick)
            pred = predict(model, test.pixels)
            entry.accuracies.append(accuracy(pred, test.labels))
            if groups is not None:
                entry.worst_groups.append(worst_group_accuracy(pred, test.labels, groups))
        entries.append(entry)
    baseline = statistics.fmean(entries[0].accuracies)
    return {
        "entries": [e.summary(None if i == 0 else baseline) for i, e in enumerate(entries)],
        "settings": {
            "seeds": seeds,
            "replacement_probability": probability,
            "long_tail": long_tail,
            "train_images": int(train.labels.numel()),
            "test_images": int(test.labels.numel()),
            "classes": len(train.class_names),
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "resolution": config.resolution,
            "backbone": str(backbone),
        },
    }


def format_table(report: dict[str, Any]) -> str:
    rows = report["entries"]
    has_groups = any("worst_group" in r for r in rows)
    head = f"{'method':16s} {'top-1 (%)':>16s} {'gain':>7s}" + (
        f" {'worst group (%)':>16s}" if has_groups else ""
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['method']:16s} {100 * r['accuracy_mean']:8.2f} ± {100 * r['accuracy_ci95']:5.2f}"
            f" {100 * r['gain']:+7.2f}"
        )
        if has_groups:
            line += f" {100 * r.get('worst_group', float('nan')):16.2f}"
        lines.append(line)
    return "\n".join(lines)
