"""The paper's tables, measured on the diffii world: every method through `augment --model world` and
`evaluate`, with per-method faithfulness (oracle) and diversity.

    python bench/quality.py --setting quick --out results/quick     # <= 30 min on 2 cores
    python bench/quality.py --setting full --out results/full
    python bench/quality.py --setting smoke --out /tmp/smoke       # the harness only, in minutes
    python bench/quality.py --setting full --out results/full --tables 10-shot "long tail 10"

Writes OUT/results.md (the tables), OUT/results.json, and PNG plots after every table, and prints the
tables as it goes. A table that OUT/results.json already holds for the same setting, methods and model
is kept, not measured again, so a long setting can be run in parts or resumed after a stop (archives
are kept under OUT/work as well).

Nothing here is tuned to a hoped-for result: the settings are fixed below and the figures are what
they are."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from diffii_core.evaluate.classifier import TrainConfig
from diffii_core.evaluate.run import evaluate, format_table
from diffii_core.models import load_model
from diffii_core.params import JobParams
from diffii_core.pipeline.augment import augment
from diffii_core.world import domain
from diffii_core.world.datasets import WorldDatasetSpec, waterbirds_groups, write_world_dataset

METHODS = ("diff-ii", "diff-mix", "diff-aug", "diff-gen", "real-guidance", "real-mix", "da-fusion")
# Methods that learn the same LoRA + token concepts reuse one learned set per dataset.
SHARED_CONCEPTS = {"diff-ii", "diff-mix", "diff-aug", "diff-gen"}


@dataclass(frozen=True)
class Setting:
    classes: int
    shots: tuple[int, ...]
    seeds: int
    concept_steps: int
    epochs: int
    test_per_class: int
    imbalances: tuple[float, ...]
    waterbirds: float | None
    split_ratios: tuple[float, ...]
    long_tail_shots: int = 50  # the head class's images; the tail falls to long_tail_shots / imbalance
    waterbirds_shots: int = 20


SETTINGS = {
    # The harness end to end in minutes, to try a change to it; its figures mean nothing.
    "smoke": Setting(
        classes=3,
        shots=(2,),
        seeds=2,
        concept_steps=20,
        epochs=2,
        test_per_class=5,
        imbalances=(4.0,),
        waterbirds=0.9,
        split_ratios=(0.0, 0.3),
        long_tail_shots=8,
        waterbirds_shots=4,
    ),
    "quick": Setting(
        classes=5,
        shots=(5,),
        seeds=10,  # 3 seeds left 95 % intervals of +-5 to +-10 points; the run took 4 of its 30 minutes
        concept_steps=1000,  # the world preset's
        epochs=30,
        test_per_class=40,
        imbalances=(),
        waterbirds=None,
        split_ratios=(0.0, 0.3, 1.0),
    ),
    "full": Setting(
        classes=10,
        shots=(5, 10),
        seeds=5,
        concept_steps=1000,
        epochs=40,
        test_per_class=60,
        imbalances=(10.0, 100.0),
        waterbirds=0.9,
        split_ratios=(0.0, 0.1, 0.3, 0.5, 1.0),
    ),
}


def say(text: str) -> None:
    print(text, flush=True)


def make_archive(
    data: Path,
    out: Path,
    method: str,
    setting: Setting,
    model: str,
    work: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    archive = out / f"{method}{''.join(f'-{k}{v:g}' for k, v in (extra or {}).items())}.zip"
    if archive.exists():
        return archive
    body: dict[str, Any] = {
        "model": model,
        "method": method,
        "metaclass": domain.METACLASS,
        "seed": 0,
        "concepts": {"steps": setting.concept_steps},  # the rest from the world's quick preset
        **(extra or {}),
    }
    concepts_dir = work / ("concepts-shared" if method in SHARED_CONCEPTS else f"concepts-{method}")
    began = time.monotonic()
    augment(data / "train", archive, JobParams.model_validate(body), batch_size=16, concepts_dir=concepts_dir)
    say(f"  {archive.name}: {time.monotonic() - began:.0f} s")
    return archive


def faithfulness_and_diversity(archive: Path | None, data: Path) -> tuple[float | None, float]:
    """Oracle share of images whose attributes are their label's, and mean pairwise pixel distance within
    a class (real images when `archive` is None)."""
    from diffii_core.world.oracle import attributes_right, load_oracle, predict, to_batch
    from diffii_core.world.sheets import archive_images

    by_class: dict[str, list[Image.Image]] = {}
    if archive is None:
        for folder in sorted((data / "train").iterdir()):
            by_class[folder.name] = [Image.open(p).convert("RGB") for p in sorted(folder.iterdir())]
    else:
        by_class = archive_images(archive)
    distances = []
    for images in by_class.values():
        x = to_batch(images).flatten(1)
        if x.shape[0] > 1:
            d = torch.cdist(x, x)
            distances.append(float(d.sum() / (x.shape[0] * (x.shape[0] - 1))))
    diversity = statistics.fmean(distances) if distances else 0.0
    if archive is None:
        return None, diversity
    images = [im for ims in by_class.values() for im in ims]
    species = [domain.species_by_name(name) for name, ims in by_class.items() for _ in ims]
    faithful = float(attributes_right(predict(load_oracle(), to_batch(images)), species).float().mean())
    return faithful, diversity


Variant = tuple[str, str, dict[str, Any]]  # (label in the table, method, parameters beyond the defaults)


def run_table(
    name: str, data: Path, out: Path, setting: Setting, model: str, variants: list[Variant]
) -> dict[str, Any]:
    """Real only and each variant on one dataset. Archives are cached per dataset, so a variant that
    two tables share (Diff-II at its default split ratio) is generated once."""
    say(f"== {name}")
    work = out / "work" / data.name
    work.mkdir(parents=True, exist_ok=True)
    archives = [
        make_archive(data, work, method, setting, model, work, extra) for _, method, extra in variants
    ]
    report = evaluate(
        data / "train",
        data / "test",
        archives,
        backbone=_backbone(),
        seeds=setting.seeds,
        config=TrainConfig(epochs=setting.epochs),
        test_groups=waterbirds_groups(data / "test"),  # worst group on the waterbirds set
    )
    for entry, (label, _, _) in zip(report["entries"][1:], variants, strict=True):
        entry["method"] = label
    for entry, archive in zip(report["entries"], [None, *archives], strict=True):
        entry["faithfulness"], entry["diversity"] = faithfulness_and_diversity(archive, data)
    say(format_table(report))
    return report


def _backbone() -> Path:
    from diffii_core.world import shipped_backbone

    return shipped_backbone()


def world_data(out: Path, key: str, spec: WorldDatasetSpec) -> Path:
    data = out / "data" / key
    if not (data / "train").exists():
        write_world_dataset(data, spec)
    return data


def markdown(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, report in tables.items():
        groups = any("worst_group" in e for e in report["entries"])
        lines += [
            f"### {name}",
            "",
            "| method | top-1 % (± 95 % CI) | gain | faithfulness | diversity |"
            + (" worst group % |" if groups else ""),
            "|---|---|---|---|---|" + ("---|" if groups else ""),
        ]
        for e in report["entries"]:
            faithful = "–" if e["faithfulness"] is None else f"{e['faithfulness']:.2f}"
            row = (
                f"| {e['method']} | {100 * e['accuracy_mean']:.2f} ± {100 * e['accuracy_ci95']:.2f} | "
                f"{100 * e['gain']:+.2f} | {faithful} | {e['diversity']:.1f} |"
            )
            if groups:
                row += f" {100 * e.get('worst_group', float('nan')):.2f} |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def plot(tables: dict[str, dict[str, Any]], split_curve: list[tuple[float, float, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, report in tables.items():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        entries = report["entries"]
        # Means with their 95 % intervals against real only's band: bars from zero hide the gains.
        real = entries[0]
        low, high = (100 * (real["accuracy_mean"] + d * real["accuracy_ci95"]) for d in (-1, 1))
        ax.axhspan(low, high, color="#cccccc", alpha=0.6, label="real only, 95 % CI")
        ax.errorbar(
            [e["method"] for e in entries],
            [100 * e["accuracy_mean"] for e in entries],
            yerr=[100 * e["accuracy_ci95"] for e in entries],
            fmt="o",
            capsize=4,
            color="#4a7ab5",
        )
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(name)
        ax.tick_params(axis="x", rotation=30)
        fig.tight_layout()
        fig.savefig(out / f"{name.replace(' ', '_')}.png", dpi=110)
        plt.close(fig)
    if split_curve:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        s, mean, ci = zip(*split_curve, strict=True)
        ax.errorbar(s, [100 * m for m in mean], yerr=[100 * c for c in ci], marker="o", capsize=3)
        ax.set_xlabel("split ratio s")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title("Diff-II split ratio")
        fig.tight_layout()
        fig.savefig(out / "split_ratio.png", dpi=110)
        plt.close(fig)


def table_plans(
    setting: Setting, methods: tuple[str, ...]
) -> dict[str, tuple[str, WorldDatasetSpec, list[Variant]]]:
    """Every table of a setting: its name -> (dataset key, dataset, variants), in the paper's order."""
    variants: list[Variant] = [(m, m, {}) for m in methods]
    plans: dict[str, tuple[str, WorldDatasetSpec, list[Variant]]] = {}
    spec = {"classes": setting.classes, "seed": 0, "test_per_class": setting.test_per_class}
    for shots in setting.shots:
        plans[f"{shots}-shot"] = (f"{shots}shot", WorldDatasetSpec(shots=shots, **spec), variants)
    for r in setting.imbalances:
        lt = WorldDatasetSpec(shots=setting.long_tail_shots, imbalance=r, **spec)
        plans[f"long tail {r:g}"] = (f"lt{r:g}", lt, variants)
    if setting.waterbirds is not None:
        wb = WorldDatasetSpec(shots=setting.waterbirds_shots, waterbirds=setting.waterbirds, **spec)
        plans["waterbirds"] = ("waterbirds", wb, variants)
    if "diff-ii" in methods:
        shots = setting.shots[0]
        default = JobParams.model_fields["split_ratio"].default
        split = [
            (f"diff-ii s={r:g}", "diff-ii", {} if r == default else {"split_ratio": r})
            for r in setting.split_ratios
        ]
        plans["split ratio"] = (f"{shots}shot", WorldDatasetSpec(shots=shots, **spec), split)
    return plans


def write_results(
    out: Path, run: dict[str, Any], setting: Setting, tables: dict[str, dict[str, Any]]
) -> None:
    curve = []
    if "split ratio" in tables:
        curve = [
            (r, e["accuracy_mean"], e["accuracy_ci95"])
            for r, e in zip(setting.split_ratios, tables["split ratio"]["entries"][1:], strict=True)
        ]
    (out / "results.json").write_text(json.dumps({**run, "tables": tables, "split_curve": curve}, indent=2))
    (out / "results.md").write_text(markdown(tables))
    plot(tables, curve, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="quick")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--model", default="world", help="model name (default: the shipped world model)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tables", nargs="*", help="only these tables, in this order (default: all)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # this process only: about 3x faster small networks on CPU
    setting = SETTINGS[args.setting]
    args.out.mkdir(parents=True, exist_ok=True)
    plans = table_plans(setting, tuple(args.methods))
    unknown = sorted(set(args.tables or []) - set(plans))
    if unknown:
        parser.error(f"no table {unknown} in setting {args.setting!r}; its tables: {sorted(plans)}")
    # A table measured by an earlier run of the same setting, methods and model is kept, so a long
    # setting can be run in parts (--tables) or resumed after a stop; anything else starts afresh.
    run = {
        "setting": args.setting,
        "recipe": asdict(setting),
        "methods": args.methods,
        "model": load_model(args.model).revision,
    }
    run = json.loads(json.dumps(run))  # as it reads back from results.json
    tables: dict[str, dict[str, Any]] = {}
    earlier = args.out / "results.json"
    if earlier.exists():
        kept = json.loads(earlier.read_text())
        if all(kept.get(k) == v for k, v in run.items()):
            tables = kept["tables"]
    began = time.monotonic()
    for name in args.tables or plans:  # in the order asked for
        key, spec, variants = plans[name]
        if name in tables:
            say(f"== {name}: kept from the earlier run in {args.out}")
            say(format_table(tables[name]))
            continue
        data = world_data(args.out, key, spec)
        tables[name] = run_table(name, data, args.out, setting, args.model, variants)
        write_results(args.out, run, setting, {k: tables[k] for k in plans if k in tables})  # a stop keeps it
    write_results(args.out, run, setting, {k: tables[k] for k in plans if k in tables})
    say(f"quality: {len(tables)} tables, {time.monotonic() - began:.0f} s, written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
