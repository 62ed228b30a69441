"""Would keeping only the synthetic images that a classifier of the real set assigns to their class help?
A probe on one development draw, from two job seeds' archives that `bench/draws.py` made:

    python bench/filter_probe.py OUT DRAW [--method diff-ii]
    diffii evaluate OUT/data/drawD/train OUT/data/drawD/test OUT/work/drawD/diff-ii-seed0.zip \
        OUT/work/drawD/diff-ii_filtered-seed0.zip --seeds 3 --epochs 30

Image i's first draw is job seed 0's image i and its redraw job seed 1's; the first the classifier
assigns to its class is kept, else the one it scores higher, as Real-Filter's redraw loop does. The
classifier is logistic regression on the world backbone's pooled features of the draw's real training
images. It writes OUT/work/drawD/METHOD_filtered-seed0.zip and prints the classifier's accuracy on the
draw's test images, how many first draws passed, how many were replaced, and the oracle's faithfulness
before and after.
"""

from __future__ import annotations

import argparse
import io
import json
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="bench/draws.py's --out")
    parser.add_argument("draw", type=int)
    parser.add_argument("--method", default="diff-ii", help="the archives' stem before -seedN")
    args = parser.parse_args()

    from world_features import backbone_features

    from diffii_core.evaluate.data import load_split, to_pixels
    from diffii_core.world import domain
    from diffii_core.world.oracle import attributes_right, load_oracle, predict, to_batch

    pooled = backbone_features()

    def features(pixels: torch.Tensor) -> torch.Tensor:
        return pooled(pixels).double()

    train = load_split(args.out / "data" / f"draw{args.draw}" / "train", 32, "training set")
    x = features(train.pixels)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(len(train.class_names), z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(train.class_names), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, train.labels) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)

    def probabilities(images: list[Image.Image]) -> torch.Tensor:
        return torch.softmax(((features(to_pixels(images, 32)) - mean) / std) @ weight.T + bias, -1)

    test = load_split(args.out / "data" / f"draw{args.draw}" / "test", 32, "test set")
    with torch.no_grad():
        z_test = (features(test.pixels) - mean) / std
        test_accuracy = float(((z_test @ weight.T + bias).argmax(1) == test.labels).double().mean())

    work = args.out / "work" / f"draw{args.draw}"
    first, second = (zipfile.ZipFile(work / f"{args.method}-seed{s}.zip") for s in (0, 1))
    records = [json.loads(line) for line in first.read("metadata.jsonl").decode().splitlines()]
    redraws = {
        (r["label_index"], r["image_index"]): r
        for r in (json.loads(line) for line in second.read("metadata.jsonl").decode().splitlines())
    }

    def image(zf: zipfile.ZipFile, record: dict) -> Image.Image:
        return Image.open(io.BytesIO(zf.read(record["file_name"]))).convert("RGB")

    again = [redraws[(r["label_index"], r["image_index"])] for r in records]
    p0 = probabilities([image(first, r) for r in records])
    p1 = probabilities([image(second, r) for r in again])
    kept, passed, replaced = [], 0, 0
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for k, (r0, r1) in enumerate(zip(records, again, strict=True)):
            c = r0["label_index"]
            ok0, ok1 = int(p0[k].argmax()) == c, int(p1[k].argmax()) == c
            passed += ok0
            use_redraw = not ok0 and (ok1 or bool(p1[k, c] > p0[k, c]))
            replaced += use_redraw
            source, record = (second, r1) if use_redraw else (first, r0)
            out.writestr(record["file_name"], source.read(record["file_name"]))
            kept.append((source, record))
        out.writestr("metadata.jsonl", "".join(json.dumps(r) + "\n" for _, r in kept))
        out.writestr("job.json", first.read("job.json"))
    target = work / f"{args.method}_filtered-seed0.zip"
    target.write_bytes(buffer.getvalue())

    oracle = load_oracle()

    def faithful(zf_records: list[tuple[zipfile.ZipFile, dict]]) -> float:
        images = [image(zf, r) for zf, r in zf_records]
        species = [domain.species_by_name(train.class_names[r["label_index"]]) for _, r in zf_records]
        return float(attributes_right(predict(oracle, to_batch(images)), species).float().mean())

    print(
        json.dumps(
            {
                "draw": args.draw,
                "classifier_test_accuracy": round(test_accuracy, 3),
                "images": len(records),
                "first_draws_passed": passed,
                "replaced": replaced,
                "oracle_faithful_before": round(faithful([(first, r) for r in records]), 3),
                "oracle_faithful_after": round(faithful(kept), 3),
                "written": str(target),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
