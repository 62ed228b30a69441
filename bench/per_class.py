"""Per class of one world draw: how faithful and how varied each method's images are, beside the real
images' own figures, from the archives `bench/draws.py` made.

    python bench/per_class.py OUT DRAW [--archives diff-ii-seed0 diff-mix_s0.7-seed0 ...]

For each class and archive it prints the oracle's share of images with every attribute of the class
(and which attribute fails most), the spread of the images (mean distance between two of them in the
world backbone's feature space, over the real images' spread) and their novelty (mean distance from an
image to the nearest real image of its class, in the same units). The real set is the draw's training
split; the test split gives each class's own real spread for scale. It answers where a method's gain
is lost: images off their class (faithfulness), images that copy the real ones (spread and novelty
low), or neither.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import torch
from PIL import Image


def archive_by_class(path: Path) -> dict[str, list[Image.Image]]:
    """Images by the class they are filed under (a mix is its target's)."""
    out: dict[str, list[Image.Image]] = {}
    with zipfile.ZipFile(path) as zf:
        for line in zf.read("metadata.jsonl").decode().splitlines():
            record = json.loads(line)
            name = record["file_name"].split("/", 1)[0]
            image = Image.open(io.BytesIO(zf.read(record["file_name"]))).convert("RGB")
            out.setdefault(name, []).append(image)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bench/draws.py's --out")
    parser.add_argument("draw", type=int)
    parser.add_argument("--archives", nargs="*", help="archive names in OUT/work/drawN (default: all)")
    args = parser.parse_args()

    from world_features import backbone_features

    from diffii_core.evaluate.data import to_pixels
    from diffii_core.world import domain
    from diffii_core.world.oracle import attribute_accuracy, load_oracle, predict, to_batch

    pooled = backbone_features()
    oracle = load_oracle()

    def features(images: list[Image.Image]) -> torch.Tensor:
        return torch.nn.functional.normalize(pooled(to_pixels(images, 32)), dim=1)

    def spread(f: torch.Tensor) -> float:
        d = torch.cdist(f, f)
        n = f.shape[0]
        return float(d.sum() / (n * (n - 1))) if n > 1 else float("nan")

    data = args.out / "data" / f"draw{args.draw}"
    work = args.out / "work" / f"draw{args.draw}"
    names = sorted(p.name for p in (data / "train").iterdir() if p.is_dir())
    real = {n: [Image.open(p).convert("RGB") for p in sorted((data / "train" / n).iterdir())] for n in names}
    test = {n: [Image.open(p).convert("RGB") for p in sorted((data / "test" / n).iterdir())] for n in names}
    wanted = args.archives or sorted(p.stem for p in work.glob("*.zip"))
    archives = {stem: archive_by_class(work / f"{stem}.zip") for stem in wanted}
    print(f"draw {args.draw}: faithful = oracle share with all four attributes (weakest attribute);")
    print("spread and novelty in units of the class's real test-image spread")
    totals: dict[str, list[tuple[float, float, float]]] = {stem: [] for stem in archives}
    for name in names:
        species = domain.species_by_name(name)
        real_f = features(real[name])
        scale = spread(features(test[name]))
        print(f"\n{name}  (train spread {spread(real_f) / scale:.2f})")
        for stem, made in archives.items():
            images = made.get(name, [])
            if not images:
                continue
            right = attribute_accuracy(predict(oracle, to_batch(images)), [species] * len(images))
            every = right.pop("all")
            weakest = min(right, key=right.get)
            f = features(images)
            novelty = float(torch.cdist(f, real_f).min(1).values.mean())
            totals[stem].append((every, spread(f) / scale, novelty / scale))
            print(
                f"  {stem:28s} n={len(images):3d} faithful {every:.2f} "
                f"({weakest} {right[weakest]:.2f})  spread {spread(f) / scale:.2f}  "
                f"novelty {novelty / scale:.2f}"
            )
    print(f"\nmean over the {len(names)} classes")
    for stem, rows in totals.items():
        if rows:
            faithful, spreads, novelty = (sum(column) / len(rows) for column in zip(*rows, strict=True))
            print(f"  {stem:28s} faithful {faithful:.2f}  spread {spreads:.2f}  novelty {novelty:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
