"""How well `method: "auto"`'s score ranks recipes on one world draw, from the archives `bench/draws.py`
made and the accuracies it measured.

    python bench/choice_probe.py OUT DRAW [--features vae backbone] [--archives NAME ...]

For each archive (default: every seed-0 archive of the draw that OUT/evals has measured) it takes the
first images of each class up to the class's real count, as auto's candidate share does, and scores
them as `diffii_core.pipeline.choice` does: leave-one-real-image-out, every synthetic image whose
`sources` name the held-out image left out. It prints the held-out images right (auto's score) and
their mean log-probability of the true class, with the model's pooled VAE features (auto's) and with
the world backbone's pooled features, beside the archive's measured gain over real only; then the
rank correlation of each score with the gain over the archives. Nothing here changes a choice.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from diffii_core.methods.real_filter import image_features
from diffii_core.pipeline.choice import Scored, held_out_probabilities


def leave_one_out(real: Scored, synthetic: Scored | None, classes: int) -> tuple[int, float]:
    """(held-out images right, their mean log-probability of the true class), from auto's own folds."""
    correct, log_p = 0, 0.0
    for p, label in zip(held_out_probabilities(real, synthetic, classes), real.labels, strict=True):
        correct += int(p.argmax()) == label
        log_p += float(torch.log(p[label].clamp_min(1e-12)))
    return correct, log_p / len(real.names)


def share(
    path: Path, classes: list[str], counts: dict[str, int]
) -> tuple[list[Image.Image], list[int], list]:
    """The archive's first images of each class, up to the class's real count, with labels and sources."""
    images, labels, sources, seen = [], [], [], dict.fromkeys(classes, 0)
    with zipfile.ZipFile(path) as zf:
        for line in zf.read("metadata.jsonl").decode().splitlines():
            record = json.loads(line)
            name = record["file_name"].split("/", 1)[0]
            if seen[name] >= counts[name]:
                continue
            seen[name] += 1
            images.append(Image.open(io.BytesIO(zf.read(record["file_name"]))).convert("RGB"))
            labels.append(classes.index(name))
            sources.append(frozenset(record.get("sources") or []))
    return images, labels, sources


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v: Sequence[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for rank, i in enumerate(order):
            r[i] = rank
        return r

    ra, rb = ranks(a), ranks(b)
    return statistics.correlation(ra, rb) if len(a) > 2 else float("nan")


def feature_makers(names: list[str]) -> dict[str, Callable[[list[Image.Image]], torch.Tensor]]:
    from diffii_core.models import load_model

    makers: dict[str, Callable[[list[Image.Image]], torch.Tensor]] = {}
    if "vae" in names:
        model = load_model("world")
        makers["vae"] = lambda images: image_features(model, images, model.resolution, "")
    if "backbone" in names:
        from transformers import ResNetModel
        from transformers.utils import logging as hf_logging

        from diffii_core.evaluate.data import to_pixels
        from diffii_core.world import shipped_backbone

        hf_logging.set_verbosity_error()
        backbone = ResNetModel.from_pretrained(str(shipped_backbone())).eval()

        def pooled(images: list[Image.Image]) -> torch.Tensor:
            with torch.no_grad():
                return backbone(to_pixels(images, 32)).pooler_output.flatten(1).double()

        makers["backbone"] = pooled
    return makers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("draw", type=int)
    parser.add_argument("--features", nargs="+", choices=("vae", "backbone"), default=["vae", "backbone"])
    parser.add_argument("--archives", nargs="*", help="archive names without .zip (default: seed 0's)")
    args = parser.parse_args()
    # The fits are small: one thread is fastest, and the probe runs beside the benches it reads.
    torch.set_num_threads(1)
    train = args.out / "data" / f"draw{args.draw}" / "train"
    work = args.out / "work" / f"draw{args.draw}"
    evals = json.loads((args.out / "evals" / f"draw{args.draw}-world.json").read_text())
    real_acc = statistics.fmean(evals["real only"])
    names = args.archives or sorted(
        p.stem for p in work.glob("*-seed0.zip") if p.name in evals and not p.stem.startswith("auto")
    )
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    real_images, labels, real_names = [], [], []
    for index, name in enumerate(classes):
        for path in sorted((train / name).iterdir()):
            real_images.append(Image.open(path).convert("RGB"))
            labels.append(index)
            real_names.append(frozenset([f"{name}/{path.name}"]))
    counts = {c: labels.count(i) for i, c in enumerate(classes)}
    shares = {n: share(work / f"{n}.zip", classes, counts) for n in names}
    gains = {n: 100 * (statistics.fmean(evals[f"{n}.zip"]) - real_acc) for n in names}
    for kind, make in feature_makers(args.features).items():
        real = Scored(make(real_images), labels, real_names)
        alone = leave_one_out(real, None, len(classes))
        print(f"{kind}: real images alone {alone[0]}/{len(labels)} right, mean log p {alone[1]:.3f}")
        scores = {}
        for n in names:
            images, ys, sources = shares[n]
            scores[n] = leave_one_out(real, Scored(make(images), ys, sources), len(classes))
            print(f"  {n:<36} {scores[n][0]:>3} right  log p {scores[n][1]:7.3f}  gain {gains[n]:+.2f}")
        right = spearman([scores[n][0] for n in names], [gains[n] for n in names])
        log_p = spearman([scores[n][1] for n in names], [gains[n] for n in names])
        print(
            f"  rank correlation with the gain over {len(names)} archives: "
            f"right {right:+.2f}, log p {log_p:+.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
