"""How faithful a method's world images are, per attribute, across concept-learning and guidance settings.

    python bench/faithfulness.py --lr 1e-3 --steps 300 --cfg 7.5 3 2 [--method diff-ii] [--out DIR]

On a 5-class, 5-shot world dataset (seed 0), for each (lr, steps) it learns concepts once, then makes
4 images per real image at every guidance scale and prints the oracle's share of images whose body,
wing, crest and tail (and all four) are their class's: one line per setting. It is the instrument for
the `diffii_faithfulness` gate of `diffii world check`, which runs lr 1e-3, 300 steps, CFG 7.5."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import tempfile
import zipfile
from pathlib import Path

import torch
from PIL import Image

from diffii_core.augment import augment
from diffii_core.methods import REGISTRY
from diffii_core.params import JobParams
from diffii_core.world import domain
from diffii_core.world.datasets import WorldDatasetSpec, write_world_dataset
from diffii_core.world.oracle import HEADS, load_oracle, predict, to_batch


def per_attribute(archive: Path) -> dict[str, float]:
    images, species = [], []
    with zipfile.ZipFile(archive) as zf:
        for line in zf.read("metadata.jsonl").decode().splitlines():
            record = json.loads(line)
            images.append(Image.open(io.BytesIO(zf.read(record["file_name"]))).convert("RGB"))
            species.append(domain.species_by_name(record["label"]))
    pred = predict(load_oracle(), to_batch(images))
    every = torch.ones(len(species), dtype=torch.bool)
    out = {}
    for name in domain.ATTRIBUTES:
        right = pred[name] == torch.tensor([HEADS[name].index(s.attributes[name]) for s in species])
        every &= right
        out[name] = round(float(right.float().mean()), 3)
    out["all"] = round(float(every.float().mean()), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="diff-ii", choices=sorted(REGISTRY))
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--steps", type=int, nargs="+", default=[300])
    parser.add_argument("--cfg", type=float, nargs="+", default=[7.5])
    parser.add_argument("--out", type=Path, help="keep datasets, concepts and archives here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # this process only: about 3x faster small networks on CPU
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data = root / "data"
        if not (data / "train").exists():
            write_world_dataset(data, WorldDatasetSpec(classes=5, shots=5, seed=0, test_per_class=1))
        for lr, steps, cfg in itertools.product(args.lr, args.steps, args.cfg):
            tag = f"{args.method}-lr{lr:g}-steps{steps}"
            params = JobParams.model_validate(
                {
                    "model": "world",
                    "method": args.method,
                    "metaclass": domain.METACLASS,
                    "seed": 0,
                    "expansion": 4,
                    "guidance_scale": cfg,
                    "concepts": {"steps": steps, "batch_size": 8, "learning_rate": lr},
                }
            )
            archive = root / f"{tag}-cfg{cfg:g}.zip"
            augment(data / "train", archive, params, batch_size=16, concepts_dir=root / f"concepts-{tag}")
            print(f"{tag} cfg {cfg:g}: {json.dumps(per_attribute(archive))}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
