"""Diff-II and its baselines over many world dataset draws, as a user runs them: `diffii world dataset`,
`diffii augment --model world` and `diffii evaluate`, each a separate command.

    python bench/draws.py --draws dev --out results/draws-dev          # the draws we may choose on
    python bench/draws.py --draws dev --out results/draws-dev --backbone scratch
    python bench/draws.py --draws dev --table long-tail --out results/draws-dev-long-tail
    python bench/draws.py --draws dev --table 5-shot --reference "diff-ii cfg=7.5"   # pair against a row
    python bench/draws.py --draws dev --shape 5-shot-10 --table race-levers --stage 1 --out OUT   # the race
    python bench/draws.py --draws dev --shape 5-shot-10 --table race-levers --stage 2 --out OUT

A table's dataset shape (5-shot, 10-shot, long tail) is recorded in OUT/dataset.json: the same draw seed
draws another dataset for another shape, so each shape has an OUT of its own.

Each draw is a fresh few-shot dataset of the world's evaluation species (its seed picks the species and
the images). Every method runs with two or more job seeds per draw; the job seed drives everything a user
run depends on (concept learning, sampling). A draw's gain for a method is its accuracy averaged over job
seeds and classifier seeds minus real only's, so the spread between draws carries the draw, the
generation and the classifier noise together, and the 95 % interval is a t-interval over draws.

Development draws and report draws are fixed here, before anything is measured on the report draws:
  DEV_DRAWS     may be looked at while choosing anything (recipe, defaults, this bench's settings);
  REPORT_DRAWS  per dataset shape (SHAPES): named in one commit, measured only after a later commit
                has frozen every method's defaults (FROZEN_RECIPE); the bench refuses them before.
Draws 201-208 were named report draws once, but the world's Diff-II guidance (4) and the 10-shot split
ratio were chosen with some of them in view (docs/results.md, "When each draw was measured"), so they
are development draws now.

Resumable: every accuracy measured is kept in OUT/evals (committed under docs/results/draws/), archives
and datasets under OUT/work and OUT/data (rebuilt when missing); a rerun measures only what OUT/evals
lacks and rewrites OUT/TABLE-BACKBONE.md, .json and .png from everything measured.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Seed 0 is the single draw the earlier tables were measured on, so it is a development draw; so are
# 201-208, which touched choices (see the module docstring).
DEV_DRAWS = (0, 101, 102, 103, 104, 105, 201, 202, 203, 204, 205, 206, 207, 208)


@dataclass(frozen=True)
class Shape:
    """A kind of dataset, as `diffii world dataset` draws it, with its own development and report draws.
    Real fine-grained sets have 37 to 200 classes; the world has 54 unseen species, so 50 is its top."""

    classes: int
    shots: int
    dev: tuple[int, ...]
    report: tuple[int, ...]
    test_per_class: int = 40
    epochs: int = 30
    imbalance: float | None = None  # long tail: `shots` for the head class down to shots / imbalance
    job_seeds: tuple[int, ...] = (0, 1)


# The fair race's shapes and their draws, named before any of them is measured. Seed ranges do not
# overlap, so a draw's seed names one dataset whatever the table. Shapes of 20 and 50 species run one job
# seed a row: a draw's generation grows with its classes, and the spread between draws, not between job
# seeds, sets the interval (5-species race, stage 1: the two job seeds of a row 0.9 to 1.9 points apart on
# a draw, on average; Diff-II's gain from +0.3 to +12.7 between draws).
ONE_SEED = (0,)
SHAPES: dict[str, Shape] = {
    "5-shot-5": Shape(5, 5, dev=(201, 202, 203, 204, 205, 206, 207, 208), report=tuple(range(301, 309))),
    "5-shot-10": Shape(10, 5, dev=(211, 212, 213, 214), report=tuple(range(311, 319))),
    "5-shot-20": Shape(20, 5, dev=(221, 222), report=(321, 322, 323, 324), job_seeds=ONE_SEED),
    "5-shot-50": Shape(
        50, 5, dev=(231, 232), report=(331, 332, 333, 334), test_per_class=20, job_seeds=ONE_SEED
    ),
    "10-shot-20": Shape(20, 10, dev=(241, 242), report=(341, 342, 343, 344), job_seeds=ONE_SEED),
    "long-tail-20": Shape(
        20, 20, dev=(251, 252), report=(351, 352, 353, 354), imbalance=20.0, job_seeds=ONE_SEED
    ),
}
REPORT_DRAWS = tuple(d for shape in SHAPES.values() for d in shape.report)
# The commit that froze every method's world defaults (diffii_core/params.py) before any report draw
# was measured; None until then, and the bench refuses report draws while it is None.
FROZEN_RECIPE: str | None = None
# What the recipe is: every default of every method, the presets and the candidates `auto` scores. A
# report run refuses a working tree whose recipe differs from FROZEN_RECIPE's.
RECIPE_FILES = ("diffii_core/params.py", "diffii_core/candidates.py", "diffii_core/methods")


def recipe_changes(commit: str) -> list[str]:
    """The recipe files that differ between `commit` and the working tree (none: the frozen recipe)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "diff", "--name-only", commit, "--", *RECIPE_FILES], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot compare the recipe with {commit}: {done.stderr.strip()}")
    return done.stdout.split()


@dataclass(frozen=True)
class Variant:
    """One row: a method at one setting. `concepts` names the learned set it shares with other rows."""

    label: str
    method: str
    args: tuple[str, ...] = ()
    concepts: str | None = "shared"
    control: bool = False  # a control separates the world from the method; it is never "first"
    stem: str | None = None  # the archives' name, where it is not the label's (kept across relabelling)

    @property
    def archive_stem(self) -> str:
        return self.stem or self.label.replace(" ", "_").replace("=", "")


@dataclass(frozen=True)
class Table:
    classes: int = 10
    shots: int = 5
    test_per_class: int = 60
    epochs: int = 40
    classifier_seeds: int = 3
    job_seeds: tuple[int, ...] = (0, 1)
    variants: tuple[Variant, ...] = field(default_factory=tuple)
    augment_args: tuple[str, ...] = ()  # beyond the world preset (the smoke table's short cuts)
    imbalance: float | None = None  # long tail: `shots` for the head class down to shots / imbalance


# Every table's first row is the one the others are paired against. Diff-II's guidance is pinned in each
# row: the world preset's default moved from the paper's 7.5 to 4 once this bench had confirmed it, and
# the archives measured before keep their names (`stem`).
DIFF_II = Variant("diff-ii", "diff-ii", ("--guidance-scale", "4"), stem="diff-ii_cfg4")  # the default
DIFF_II_PAPER = Variant("diff-ii cfg=7.5", "diff-ii", ("--guidance-scale", "7.5"), stem="diff-ii")
PAPER_5SHOT = (
    DIFF_II,  # split ratio 0.3, the paper's 5-shot value, is the default
    DIFF_II_PAPER,
    Variant("diff-mix s=0.5", "diff-mix", ("--strength", "0.5")),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
    Variant("diff-aug s=0.5", "diff-aug", ("--strength", "0.5")),
    Variant("diff-aug s=0.7", "diff-aug", ("--strength", "0.7")),
    Variant("diff-gen", "diff-gen"),
    Variant("da-fusion", "da-fusion", concepts="da-fusion"),
    # Controls: the VAE round trip of the real images alone, and img2img at a strength so low that
    # it is one denoising step (1/25) from the real latent.
    Variant("vae round trip", "vae", concepts=None, control=True),
    Variant("diff-aug s=0.04", "diff-aug", ("--strength", "0.04"), control=True),
)
# Recipe levers, measured on development draws only: each changes one setting of Diff-II's default and
# reuses the draw's learned concepts. Diff-Mix at its published strength is the bar to clear.
LEVERS_5SHOT = (
    DIFF_II_PAPER,  # the default when the levers were measured
    Variant("diff-ii cfg=4", "diff-ii", ("--guidance-scale", "4")),
    Variant(
        "diff-ii cfg=7.5 split=0.6",
        "diff-ii",
        ("--guidance-scale", "7.5", "--split-ratio", "0.6"),
        stem="diff-ii_split0.6",
    ),
    Variant(
        "diff-ii cfg=7.5 split=0",
        "diff-ii",
        ("--guidance-scale", "7.5", "--split-ratio", "0"),
        stem="diff-ii_split0",
    ),  # no suffix stage
    Variant(
        "diff-ii cfg=7.5 x10", "diff-ii", ("--guidance-scale", "7.5", "--expansion", "10"), stem="diff-ii_x10"
    ),
    Variant("diff-ii cfg=4 split=0.6", "diff-ii", ("--guidance-scale", "4", "--split-ratio", "0.6")),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
)
# A lever the development draws favoured, beside the then default, on the report draws: the confirmation.
CONFIRM_5SHOT = (DIFF_II_PAPER, Variant("diff-ii cfg=4", "diff-ii", ("--guidance-scale", "4")))
# 10-shot: the paper's 10-shot split ratio beside the default, against Diff-Mix at its recommended strength.
TEN_SHOT = (
    DIFF_II,
    Variant("diff-ii s=0.1", "diff-ii", ("--guidance-scale", "4", "--split-ratio", "0.1")),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
)
# Long tail: the paper's long-tail split ratio, and pools of tail classes filled
# with other classes' images instead of fresh noise, against Diff-Mix, whose targets are drawn over all
# classes. Levers on development draws; the report table carries what they chose beside the published.
DIFF_II_LONG_TAIL = Variant("diff-ii s=1", "diff-ii", ("--guidance-scale", "4", "--split-ratio", "1"))
DIFF_II_FILL3 = Variant("diff-ii fill=3", "diff-ii", ("--guidance-scale", "4", "--fill-pool-to", "3"))
LONG_TAIL_LEVERS = (
    DIFF_II,
    DIFF_II_LONG_TAIL,
    DIFF_II_FILL3,
    Variant("diff-ii fill=5", "diff-ii", ("--guidance-scale", "4", "--fill-pool-to", "5")),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
)
# The report table: the default, the paper's long-tail split ratio, the fill the development draws
# favoured (fill=3 was level or ahead of the default on both; fill=5 ahead on one, behind on the other),
# and Diff-Mix at both published strengths.
LONG_TAIL_REPORT = (
    DIFF_II,
    DIFF_II_LONG_TAIL,
    DIFF_II_FILL3,
    Variant("diff-mix s=0.5", "diff-mix", ("--strength", "0.5")),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
)


# The fair race's sweep: every method gets the same budget on development draws, in two stages. Stage 1:
# its published setting of its own lever at guidance 4 and 7.5. Stage 2: at the guidance stage 1 favoured
# (its best mean gain), its lever's three other settings. So each method is measured at five settings;
# Diff-Gen, which has no lever but guidance, at five guidances. Each method's world default becomes its
# best row. The lever settings: strength 0.5, 0.7, 0.9 and Diff-Mix's uniform draw over the three for
# every img2img method (DA-Fusion: its own strength list first), split ratio 0.1, 0.3, 0.5, 0.7 for Diff-II.
_STRENGTHS = {"0.7": ("0.7",), "0.5": ("0.5",), "0.9": ("0.9",), "u": ("0.5", "0.7", "0.9")}
RACE_SETTINGS: dict[str, dict[str, tuple[str, ...]]] = {  # method: {setting: its arguments}, published first
    "diff-ii": {f"split={r}": ("--split-ratio", r) for r in ("0.3", "0.1", "0.5", "0.7")},
    **{
        m: {
            f"s={name}": tuple(a for v in values for a in ("--strength", v))
            for name, values in _STRENGTHS.items()
        }
        for m in ("diff-mix", "diff-aug", "real-guidance")
    },
    "da-fusion": {
        "s=own": (),
        **{
            f"s={n}": tuple(a for v in vs for a in ("--strength", v))
            for n, vs in _STRENGTHS.items()
            if n != "0.7"
        },
    },
    "diff-gen": {},
}
RACE_GUIDANCES = ("4", "7.5")
DIFF_GEN_GUIDANCES = ("2.5", "5.5", "10")  # Diff-Gen's stage 2


def race_concepts(method: str) -> str | None:
    """The learned set a method reads: none for Real-Guidance, its own for DA-Fusion, else the shared."""
    return {"real-guidance": None, "da-fusion": "da-fusion"}.get(method, "shared")


def race_row(method: str, cfg: str, setting: str | None = None) -> Variant:
    """The row of `method` at guidance `cfg` and its lever's `setting` (labels kept from the first sweep,
    so the archives and evaluations measured under them are reused)."""
    concepts = race_concepts(method)
    if setting is None:
        return Variant(f"{method} cfg={cfg}", method, ("--guidance-scale", cfg), concepts=concepts)
    args = ("--guidance-scale", cfg, *RACE_SETTINGS[method][setting])
    label = f"{method} cfg={cfg} {setting}" if method == "diff-ii" else f"{method} {setting} cfg={cfg}"
    return Variant(label, method, args, concepts=concepts)


def race_stage1() -> tuple[Variant, ...]:
    return tuple(
        race_row(method, cfg, next(iter(settings), None))
        for method, settings in RACE_SETTINGS.items()
        for cfg in RACE_GUIDANCES
    )


def race_stage2(gains: dict[str, float]) -> tuple[Variant, ...]:
    """Stage 2's rows, from stage 1's mean gains by label: each method's other settings at its better
    guidance (the published 7.5 on a tie)."""
    rows: list[Variant] = []
    for method, settings in RACE_SETTINGS.items():
        first = next(iter(settings), None)
        best = max(reversed(RACE_GUIDANCES), key=lambda cfg: gains[race_row(method, cfg, first).label])
        if not settings:
            rows += [race_row(method, cfg) for cfg in DIFF_GEN_GUIDANCES]
        else:
            rows += [race_row(method, best, setting) for setting in list(settings)[1:]]
    return tuple(rows)


def _race_rows() -> tuple[Variant, ...]:
    """Every row either stage can ask for, stage 1's first (the first is the table's reference)."""
    rows = list(race_stage1())
    for method, settings in RACE_SETTINGS.items():
        for cfg in RACE_GUIDANCES:
            rows += [race_row(method, cfg, setting) for setting in list(settings)[1:]]
    rows += [race_row("diff-gen", cfg) for cfg in DIFF_GEN_GUIDANCES]
    return tuple(rows)


RACE_LEVERS = _race_rows()
# The concept budget: the world preset learns 1000 steps of batch 8 whatever the dataset, 40 steps an
# image at 5 species but 20 at 10 and 4 at 50. Each method that learns the shared concepts, at its stage-1
# setting and guidance 4, with the preset's budget and with twice it (40 steps an image at 10 species),
# on the same draws: whether the budget should grow with the images, and for which methods it matters.
CONCEPT_BUDGET = tuple(
    row
    for v in (
        race_row("diff-ii", "4", "split=0.3"),
        race_row("diff-mix", "4", "s=0.7"),
        race_row("diff-aug", "4", "s=0.7"),
        race_row("diff-gen", "4"),
    )
    for row in (
        v,
        Variant(
            f"{v.label} steps=2000", v.method, (*v.args, "--concept-steps", "2000"), concepts="steps2000"
        ),
    )
)
# diffii's recipe chosen per dataset (`--method auto`, docs/methods.md) beside the default and the
# candidates it most often picks between; it learns its concepts like the others (shared).
AUTO_ROWS = (
    DIFF_II,
    Variant("auto", "auto"),
    Variant("diff-mix s=0.7", "diff-mix", ("--strength", "0.7")),
    Variant("diff-gen", "diff-gen"),
)


# The race's report: every method at its world default, with no argument, so the rows measure the frozen
# recipe itself; and diffii's choice per dataset, which scores its candidates on the job's real images.
RACE_REPORT = (
    *(Variant(m, m, concepts=race_concepts(m)) for m in RACE_SETTINGS),
    Variant("auto", "auto"),
)


# 10 classes from 20 images down to 1 (imbalance 20): two classes of one image, one of two.
LONG_TAIL = {"classes": 10, "shots": 20, "imbalance": 20.0, "test_per_class": 40, "epochs": 30}
TABLES = {
    "long-tail-levers": Table(**LONG_TAIL, variants=LONG_TAIL_LEVERS),
    "long-tail": Table(**LONG_TAIL, variants=LONG_TAIL_REPORT),
    "10-shot": Table(classes=5, shots=10, test_per_class=40, epochs=30, variants=TEN_SHOT),
    "5-shot": Table(classes=5, test_per_class=40, epochs=30, variants=PAPER_5SHOT),
    "5-shot-confirm": Table(classes=5, test_per_class=40, epochs=30, variants=CONFIRM_5SHOT),
    "5-shot-levers": Table(classes=5, test_per_class=40, epochs=30, variants=LEVERS_5SHOT),
    # Dataset shape from --shape; development draws only.
    "race-levers": Table(classes=5, test_per_class=40, epochs=30, variants=RACE_LEVERS),
    "auto": Table(classes=5, test_per_class=40, epochs=30, variants=AUTO_ROWS),
    "race-report": Table(classes=5, test_per_class=40, epochs=30, variants=RACE_REPORT),
    "concept-budget": Table(classes=5, test_per_class=40, epochs=30, variants=CONCEPT_BUDGET),
    # The harness end to end in minutes; its figures mean nothing.
    "smoke": Table(
        classes=2,
        shots=2,
        test_per_class=3,
        epochs=1,
        classifier_seeds=2,
        variants=PAPER_5SHOT,
        augment_args=(
            "--concept-steps",
            "3",
            "--expansion",
            "1",
            "--inference-steps",
            "2",
            "--inversion-steps",
            "2",
        ),
    ),
}


def say(text: str) -> None:
    print(text, flush=True)


def diffii(*args: str, threads: int | None = None) -> str:
    """Run the `diffii` command as a user would, in its own process (with `threads` torch threads, where
    given); its stdout."""
    cmd = [sys.executable, "-m", "services.cli", *args]
    env = {**os.environ, "DIFFII_THREADS": str(threads)} if threads else None
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-4000:]}")
    return done.stdout


def dataset(out: Path, table: Table, draw: int) -> Path:
    data = out / "data" / f"draw{draw}"
    if not (data / "classes.json").exists():
        shutil.rmtree(data, ignore_errors=True)
        diffii(
            "world", "dataset", str(data), "--classes", str(table.classes), "--shots", str(table.shots),
            "--seed", str(draw), "--test-per-class", str(table.test_per_class),
            *(("--imbalance", str(table.imbalance)) if table.imbalance else ()),
        )  # fmt: skip
    return data


def check_dataset_shape(out: Path, table: Table, parser: argparse.ArgumentParser) -> None:
    """OUT's datasets, concepts and evaluations are per draw: tables that draw another kind of dataset
    (the long tail's) need an OUT of their own, which OUT/dataset.json records."""
    shape = {
        "classes": table.classes, "shots": table.shots, "test_per_class": table.test_per_class,
        "imbalance": table.imbalance, "epochs": table.epochs, "classifier_seeds": table.classifier_seeds,
    }  # fmt: skip
    path = out / "dataset.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != shape:
            parser.error(f"{out} holds draws of {recorded}; this table draws {shape}: use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(shape, indent=1) + "\n")


def archive_name(variant: Variant, seed: int) -> str:
    return f"{variant.archive_stem}-seed{seed}.zip"


def archive_path(out: Path, draw: int, variant: Variant, seed: int) -> Path:
    return out / "work" / f"draw{draw}" / archive_name(variant, seed)


def make_archive(
    path: Path, data: Path, draw: int, variant: Variant, seed: int, table: Table, threads: int | None = None
) -> None:
    work = path.parent
    work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    if variant.method == "vae":
        vae_round_trip(data / "train", path)
    else:
        args = [
            "augment", str(data / "train"), "--out", str(path), "--model", "world", "--metaclass", "bird",
            "--method", variant.method, "--seed", str(seed), "--batch-size", "16", "--quiet",
            *variant.args, *table.augment_args,
        ]  # fmt: skip
        if variant.concepts is not None:
            # One learned set per draw and concept recipe, learned by the first job seed's run and
            # reused by the others through --concepts-dir, as a user who learns once and generates
            # again would: the job seeds vary the generation, not the concepts.
            args += ["--concepts-dir", str(work / f"concepts-{variant.concepts}")]
        diffii(*args, threads=threads)
    say(f"  draw {draw} {variant.label} seed {seed}: {time.monotonic() - began:.0f} s")


def make_archives(
    todo: list[tuple[Variant, int, Path]], data: Path, draw: int, table: Table, parallel: int
) -> None:
    """Make the archives, `parallel` commands at once. The first of each concept set learns it on every
    thread, as a run alone would (learned bytes depend on the thread count on a CPU, not on what else
    runs); with `parallel` above 1 the draw's learners run at once, since one keeps about one core busy
    whatever its threads. The rest only generate, which gives the same bytes at any thread count, so they
    share the CPUs."""
    from concurrent.futures import ThreadPoolExecutor

    from diffii_core.pipeline.steps import holds_concepts
    from diffii_core.threads import usable_cpus

    learns = {}
    for v, seed, path in todo:
        learned = holds_concepts(path.parent / f"concepts-{v.concepts}")
        if v.concepts is not None and v.concepts not in learns and not learned:
            learns[v.concepts] = (v, seed, path)
    learners = list(learns.values())
    with ThreadPoolExecutor(len(learners) if parallel > 1 and learners else 1) as pool:
        list(pool.map(lambda item: make_archive(item[2], data, draw, item[0], item[1], table), learners))
    rest = [item for item in todo if item not in learns.values()]
    threads = max(1, usable_cpus() // parallel) if parallel > 1 else None
    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(lambda item: make_archive(item[2], data, draw, item[0], item[1], table, threads), rest))


def vae_round_trip(train: Path, path: Path) -> None:
    """A pseudo-method's archive: every real image encoded and decoded by the world model's VAE, once."""
    import torch
    from PIL import Image

    from diffii_core.images import decode_latents, encode_images, fit_square, png_bytes, to_tensor
    from diffii_core.models import load_model

    model = load_model("world")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    records, files = [], {}
    for index, name in enumerate(classes):
        sources = sorted((train / name).iterdir())
        pixels = torch.stack(
            [to_tensor(fit_square(Image.open(p).convert("RGB"), model.resolution)) for p in sources]
        )
        for source, array in zip(sources, decode_latents(model, encode_images(model, pixels)), strict=True):
            file_name = f"{name}/{source.stem}.png"
            files[file_name] = png_bytes(array)
            records.append({"file_name": file_name, "label_index": index, "source": source.name})
    job = {
        "params": {"method": "vae round trip"},
        "classes": [{"index": i, "name": n} for i, n in enumerate(classes)],
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, png in files.items():
            zf.writestr(name, png)
        zf.writestr("metadata.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        zf.writestr("job.json", json.dumps(job))
    path.write_bytes(buffer.getvalue())


def scratch_backbone(out: Path) -> Path:
    """The world backbone's architecture with fresh weights: a classifier that has seen no bird."""
    where = out / "backbone-scratch"
    if not (where / "config.json").exists():
        import torch
        from transformers import AutoConfig, AutoModelForImageClassification

        from diffii_core.world import shipped_backbone

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(shipped_backbone())
        AutoModelForImageClassification.from_config(config).save_pretrained(where)
    return where


def evals_path(out: Path, draw: int, backbone: str) -> Path:
    return out / "evals" / f"draw{draw}-{backbone}.json"


def measured(out: Path, draw: int, backbone: str) -> dict[str, list[float]]:
    path = evals_path(out, draw, backbone)
    return json.loads(path.read_text()) if path.exists() else {}


def evaluations(
    out: Path,
    data: Path,
    draw: int,
    table: Table,
    archives: dict[str, Path],
    backbone: str,
    parallel: int = 1,
):
    """Accuracies per classifier seed: {"real only": [...], archive name: [...]}; measures the missing,
    in `parallel` commands at once, each with its share of the threads (an archive's accuracies do not
    depend on the thread count, nor on the other archives of the call)."""
    from concurrent.futures import ThreadPoolExecutor

    from diffii_core.threads import usable_cpus

    path = evals_path(out, draw, backbone)
    done = measured(out, draw, backbone)
    missing = [a for name, a in archives.items() if name not in done]
    if not missing and "real only" in done:
        return done
    extra = ["--backbone", str(scratch_backbone(out))] if backbone != "world" else []
    chunks = [missing[i :: max(1, parallel)] for i in range(max(1, parallel))]
    chunks = [chunk for chunk in chunks if chunk] or [[]]
    threads = max(1, usable_cpus() // len(chunks)) if len(chunks) > 1 else None

    def run(chunk: list[Path]) -> list[dict[str, Any]]:
        args = [
            "evaluate", str(data / "train"), str(data / "test"), *map(str, chunk), "--json",
            "--seeds", str(table.classifier_seeds), "--epochs", str(table.epochs), *extra,
        ]  # fmt: skip
        return json.loads(diffii(*args, threads=threads))["entries"]

    began = time.monotonic()
    with ThreadPoolExecutor(len(chunks)) as pool:
        reports = list(pool.map(run, chunks))
    # `evaluate` trains real only with the same classifier seeds each call: it is one row, kept once.
    done.setdefault("real only", reports[0][0]["accuracies"])
    for chunk, entries in zip(chunks, reports, strict=True):
        for archive_path, entry in zip(chunk, entries[1:], strict=True):
            done[archive_path.name] = entry["accuracies"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(done, indent=1))
    seconds = time.monotonic() - began
    say(f"  draw {draw}: evaluated {len(missing)} archives ({backbone} backbone), {seconds:.0f} s")
    return done


def draw_result(accs: dict[str, list[float]], table: Table, job_seeds: tuple[int, ...]) -> dict[str, Any]:
    """{"real only": accuracy, label: {gain, by_seed, seed_spread}} for every row of `table` whose
    archives of every job seed (one for a control) were evaluated on this draw."""
    real = statistics.fmean(accs["real only"])
    result: dict[str, Any] = {"real only": real}
    for v in table.variants:
        seeds = job_seeds[:1] if v.control else job_seeds
        names = [archive_name(v, seed) for seed in seeds]
        if not all(n in accs for n in names):
            continue
        by_seed = [statistics.fmean(accs[n]) for n in names]
        result[v.label] = {
            "gain": statistics.fmean(by_seed) - real,
            "by_seed": [a - real for a in by_seed],
            "seed_spread": max(by_seed) - min(by_seed),
        }
    return result


def stage1_gains(out: Path, backbone: str, parser: argparse.ArgumentParser) -> dict[str, float]:
    """Stage 1's mean gains by label from OUT's race-levers table; every stage-1 row must be in it."""
    path = out / f"race-levers-{backbone}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else {}
    missing = [v.label for v in race_stage1() if v.label not in rows]
    if missing:
        parser.error(f"stage 2 needs stage 1 measured first in {path}; missing rows {missing}")
    return {label: row["mean"] for label, row in rows.items()}


def race_best(rows: dict[str, Any]) -> list[tuple[str, Variant | None, Variant | None, list[str]]]:
    """Per method of the race: its published row (stage 1 at guidance 7.5) where measured, its
    development best (the row of the highest mean gain among its five; on a tie the published, else the
    earlier) once all five are in `rows`, and what is still missing."""
    stage1 = race_stage1()
    done1 = all(v.label in rows for v in stage1)
    wanted = [*stage1, *race_stage2({v.label: rows[v.label]["mean"] for v in stage1})] if done1 else stage1
    out = []
    for method, settings in RACE_SETTINGS.items():
        published = race_row(method, "7.5", next(iter(settings), None))
        mine = [v for v in wanted if v.method == method]
        missing = [v.label for v in mine if v.label not in rows] + ([] if done1 else ["stage 2"])
        best = None if missing else max(mine, key=lambda v: (rows[v.label]["mean"], v == published))
        out.append((method, published if published.label in rows else None, best, missing))
    return out


def print_best(out: Path, backbone: str) -> None:
    path = out / f"race-levers-{backbone}.json"
    if not path.exists():
        raise SystemExit(f"no race table at {path}: measure stage 1 first")
    summary = json.loads(path.read_text())
    rows = summary["rows"]
    say(f"development best per method, over draws {', '.join(map(str, summary['draws']))} ({backbone}):")
    say("| method | published row | mean gain | development best | mean gain | its arguments |")
    say("|---|---|---|---|---|---|")
    for method, published, best, missing in race_best(rows):
        pub = "" if published is None else f"{published.label} | {100 * rows[published.label]['mean']:+.2f}"
        if best is None:
            say(f"| {method} | {pub or ' | '} | missing: {', '.join(missing)} | | |")
        else:
            gain = 100 * rows[best.label]["mean"]
            say(f"| {method} | {pub or ' | '} | {best.label} | {gain:+.2f} | {' '.join(best.args)} |")


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t-interval); no interval from a single draw."""
    from diffii_core.evaluate.run import ci95

    return statistics.fmean(values), ci95(values) if len(values) > 1 else math.nan


def summarise(per_draw: dict[int, dict[str, dict[str, Any]]], table: Table) -> dict[str, Any]:
    """Per-draw gains, the mean gain with its interval over draws, paired differences against the first
    row (the table's Diff-II) and how often each method is first."""
    draws = sorted(per_draw)
    labels = [v.label for v in table.variants]
    first = labels[0]
    rows: dict[str, Any] = {}
    for label in labels:
        gains = [per_draw[d][label]["gain"] for d in draws]
        mean, half = interval(gains)
        rows[label] = {"gains": gains, "mean": mean, "ci95": half}
        if label != first:
            diffs = [per_draw[d][first]["gain"] - per_draw[d][label]["gain"] for d in draws]
            rows[label]["first_row_minus"] = dict(zip(("mean", "ci95"), interval(diffs), strict=True))
        spreads = [per_draw[d][label]["seed_spread"] for d in draws]
        rows[label]["seed_spread"] = statistics.fmean(spreads)
    methods = [v.label for v in table.variants if not v.control]
    firsts = dict.fromkeys(methods, 0.0)
    for d in draws:
        best = max(per_draw[d][m]["gain"] for m in methods)
        tied = [m for m in methods if per_draw[d][m]["gain"] >= best - 1e-9]
        for m in tied:  # a tie shares the draw
            firsts[m] += 1 / len(tied)
    real = [per_draw[d]["real only"] for d in draws]
    return {
        "draws": draws,
        "rows": rows,
        "firsts": firsts,
        "real_only": dict(zip(("mean", "ci95"), interval(real), strict=True)),
    }


def markdown(name: str, summary: dict[str, Any], table: Table, backbone: str, kind: str) -> str:
    draws = summary["draws"]
    real = summary["real_only"]
    reference = table.variants[0].label
    shape = f", long tail: imbalance {table.imbalance:g} from {table.shots} images" if table.imbalance else ""
    lines = [
        f"### {name}, {kind} draws {', '.join(map(str, draws))} ({backbone} backbone)",
        "",
        f"{table.classes} classes, {table.shots} shots{shape}, {table.test_per_class} test images a class; "
        f"job seeds {', '.join(map(str, table.job_seeds))}; {table.classifier_seeds} classifier seeds, "
        f"{table.epochs} epochs. Real only: {100 * real['mean']:.2f} ± {100 * real['ci95']:.2f} % "
        "(mean over draws). Gains in points, 95 % t-interval over draws; the paired difference is "
        f"{reference}'s gain minus the row's on the same draws. Diff-II rows: guidance 4 (the world "
        "default) unless the row says cfg=7.5 (the paper's).",
        "",
        f"| method | mean gain | per-draw gains | {reference} minus row | first | job-seed spread |",
        "|---|---|---|---|---|---|",
    ]
    for v in table.variants:
        row = summary["rows"][v.label]
        per = " ".join(f"{100 * g:+.1f}" for g in row["gains"])
        paired = row.get("first_row_minus")
        paired_text = "" if paired is None else f"{100 * paired['mean']:+.2f} ± {100 * paired['ci95']:.2f}"
        first = "control" if v.control else f"{summary['firsts'][v.label]:.3g}/{len(draws)}"
        lines.append(
            f"| {v.label} | {100 * row['mean']:+.2f} ± {100 * row['ci95']:.2f} | {per} | {paired_text} | "
            f"{first} | {100 * row['seed_spread']:.1f} |"
        )
    return "\n".join([*lines, ""])


def plot(summary: dict[str, Any], table: Table, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v.label for v in table.variants]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.axhline(0, color="#888888", lw=1)
    for x, label in enumerate(labels):
        row = summary["rows"][label]
        gains = [100 * g for g in row["gains"]]
        jitter = [x + 0.08 * (i - (len(gains) - 1) / 2) / max(1, len(gains)) * 4 for i in range(len(gains))]
        ax.scatter(jitter, gains, s=14, color="#9bb7d9", zorder=2)
        ax.errorbar(
            [x], [100 * row["mean"]], yerr=[100 * row["ci95"]], fmt="o", color="#1f4e8c", capsize=5, zorder=3
        )
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("gain over real only (points)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", choices=("dev", "report"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--table", choices=sorted(TABLES), default="5-shot")
    parser.add_argument("--only", nargs="*", help="only these draws (a subset of the chosen kind)")
    parser.add_argument("--variants", nargs="*", help="only these rows (labels), e.g. to add one later")
    parser.add_argument("--backbone", choices=("world", "scratch"), default="world")
    parser.add_argument(
        "--shape", choices=sorted(SHAPES), help="draw datasets of this shape, from its own draws (SHAPES)"
    )
    parser.add_argument("--reference", help="the row the others are paired against (default: the first)")
    parser.add_argument("--generate-only", action="store_true", help="make the archives, evaluate later")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="generation and evaluation commands at once, each with its share of the CPUs' threads "
        "(concepts are still learned on every thread, the draw's learners at once, so images and "
        "accuracies are those of 1)",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2), help="race-levers: stage 1's rows, or stage 2's from stage 1's"
    )
    parser.add_argument(
        "--best", action="store_true", help="race-levers: print each method's development best and stop"
    )
    args = parser.parse_args()
    table = TABLES[args.table]
    if args.best:
        if args.table != "race-levers":
            parser.error("--best belongs to --table race-levers")
        print_best(args.out, args.backbone)
        return 0
    if args.stage and args.table != "race-levers":
        parser.error("--stage belongs to --table race-levers")
    if args.stage == 1:
        args.variants = [v.label for v in race_stage1()]
    elif args.stage == 2:
        args.variants = [v.label for v in race_stage2(stage1_gains(args.out, args.backbone, parser))]
    if args.variants:
        unknown = set(args.variants) - {v.label for v in table.variants}
        if unknown:
            parser.error(f"no rows {sorted(unknown)}; rows: {[v.label for v in table.variants]}")
        chosen = tuple(v for v in table.variants if v.label in args.variants)
        table = Table(**{**table.__dict__, "variants": chosen})
    if args.reference:
        rows = [v for v in table.variants if v.label == args.reference]
        if not rows:
            parser.error(f"no row {args.reference!r}; rows: {[v.label for v in table.variants]}")
        rest = tuple(v for v in table.variants if v.label != args.reference)
        table = Table(**{**table.__dict__, "variants": (rows[0], *rest)})
    if args.table.endswith("-levers") and args.draws != "dev":
        parser.error("recipe levers are measured on development draws only")
    if args.draws == "report" and FROZEN_RECIPE is None:
        parser.error("report draws are measured only after a commit freezes the recipe (FROZEN_RECIPE)")
    if args.draws == "report" and (changed := recipe_changes(FROZEN_RECIPE)):
        parser.error(f"the recipe differs from the frozen one ({FROZEN_RECIPE}) in {', '.join(changed)}")
    if args.draws == "report" and not args.shape:
        parser.error("report draws belong to a dataset shape: name one with --shape")
    if args.shape:
        shape = SHAPES[args.shape]
        dims = {k: v for k, v in shape.__dict__.items() if k not in ("dev", "report")}
        table = Table(**{**table.__dict__, **dims})
        pool = shape.dev if args.draws == "dev" else shape.report
    else:
        pool = DEV_DRAWS
    draws = [int(d) for d in args.only] if args.only else list(pool)
    if set(draws) - set(pool):
        parser.error(f"draws {sorted(set(draws) - set(pool))} are not {args.draws} draws {pool}")
    # Every row of the table, in this run's shape and with its reference first: what the summary shows.
    first = table.variants[0] if args.reference else None
    rows = tuple(v for v in TABLES[args.table].variants if v != first)
    full = Table(**{**table.__dict__, "variants": (first, *rows) if first else rows})
    check_dataset_shape(args.out, table, parser)
    os.environ.setdefault("TQDM_DISABLE", "1")
    began = time.monotonic()
    per_draw: dict[int, dict[str, Any]] = {}
    for draw in draws:
        data = dataset(args.out, table, draw)
        archives: dict[str, tuple[Variant, int, Path]] = {}
        for seed in table.job_seeds:
            for v in table.variants:
                if v.control and seed != table.job_seeds[0]:
                    continue  # a control is the world's, not the generation's: one seed says it
                archives[archive_name(v, seed)] = (v, seed, archive_path(args.out, draw, v, seed))
        # OUT/evals is the record: an archive it already holds a figure for is not remade.
        done = measured(args.out, draw, args.backbone)
        make_archives(
            [(v, seed, p) for name, (v, seed, p) in archives.items() if name not in done and not p.exists()],
            data, draw, table, args.parallel,
        )  # fmt: skip
        if args.generate_only:
            continue
        accs = evaluations(
            args.out,
            data,
            draw,
            table,
            {k: p for k, (_, _, p) in archives.items()},
            args.backbone,
            args.parallel,
        )
        per_draw[draw] = draw_result(accs, full, table.job_seeds)
        gains = ", ".join(f"{v.label} {100 * per_draw[draw][v.label]['gain']:+.2f}" for v in table.variants)
        say(f"draw {draw}: real only {100 * per_draw[draw]['real only']:.2f}; {gains}")
    if per_draw:
        # The table written holds every row of the full table measured on all these draws, so a run of
        # a few rows (--variants, --stage) leaves the others' figures in it.
        rows = tuple(v for v in full.variants if all(v.label in per_draw[d] for d in per_draw))
        table = Table(**{**table.__dict__, "variants": rows})
        summary = summarise(per_draw, table)
        # A run over some of a shape's draws keeps its own table, beside the whole pool's that stage 2
        # reads (the older tables, without --shape, each name their draws in --only).
        whole = not args.shape or set(summary["draws"]) == set(pool)
        some = "" if whole else "-draws-" + "-".join(map(str, summary["draws"]))
        stem = f"{args.table}-{args.backbone}{some}".replace(" ", "_")
        text = markdown(args.table, summary, table, args.backbone, args.draws)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.md").write_text(text)
        (args.out / f"{stem}.json").write_text(json.dumps({"per_draw": per_draw, **summary}, indent=1))
        listed = ", ".join(map(str, summary["draws"]))
        title = (
            f"{args.table}, {args.backbone} backbone: gain per {args.draws} draw ({listed}), mean, 95 % CI"
        )
        plot(summary, table, args.out / f"{stem}.png", title)
        say(text)
    say(f"draws: {len(draws)} draws, {time.monotonic() - began:.0f} s, written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
