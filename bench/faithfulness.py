"""How faithful a method's world images are, per attribute, across concept-learning and guidance settings.

    python bench/faithfulness.py [--lr 5e-3] [--lora-lr 1e-4] [--steps 300] [--tokens 1 8] [--init random]
                                 [--rank 10] [--cfg 7.5 3] [--method diff-ii] [--dataset-seed 0] [--out DIR]

On a 5-class, 5-shot world dataset, for each (token lr, LoRA lr, steps, tokens per class, placeholder
start, LoRA rank) it learns concepts once, then
makes 4 images per real image at every guidance scale and prints the oracle's share of images whose
body, wing, crest and tail (and all four) are their class's: one line per setting. What is not given
comes from the world's quick preset, which is what the `diffii_faithfulness` gate of `diffii world
check` runs (dataset seed 0, CFG 7.5).

`--starts` also tells where Diff-II loses faithfulness: with the same learned concepts, prompts and
guidance, it denoises from each class's DDIM inversions themselves (phi = 0: what inversion keeps), from
fresh Gaussian noise (what the concept alone carries) and from Diff-II's own circle points, and prints
one line per start."""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import torch

from diffii_core.methods import METHODS
from diffii_core.params import JobParams
from diffii_core.pipeline.augment import augment
from diffii_core.world import domain
from diffii_core.world.datasets import WorldDatasetSpec, write_world_dataset
from diffii_core.world.oracle import attribute_accuracy, load_oracle, predict, to_batch
from diffii_core.world.sheets import archive_images


def per_attribute(archive: Path) -> dict[str, float]:
    made = archive_images(archive)
    images = [image for class_images in made.values() for image in class_images]
    species = [domain.species_by_name(name) for name, class_images in made.items() for _ in class_images]
    accuracy = attribute_accuracy(predict(load_oracle(), to_batch(images)), species)
    return {name: round(value, 3) for name, value in accuracy.items()}


def by_start(data: Path, concepts_dir: Path, params: JobParams) -> dict[str, dict[str, float]]:
    """Oracle accuracy of images denoised from three starts, everything else equal (see --starts)."""
    from diffii_core.dataset import DatasetLimits, load_dataset
    from diffii_core.denoising.prompts import concept_prompt, encode_prompts
    from diffii_core.denoising.sampling import sample_two_stage
    from diffii_core.denoising.suffixes import suffixes_for
    from diffii_core.images import decode_latents
    from diffii_core.inversion.invert import invert_class
    from diffii_core.learning.concepts import Concepts, concepts_applied
    from diffii_core.methods.diff_ii import random_circle_interpolation
    from diffii_core.models import load_model
    from diffii_core.world.check import _pixels

    model, dataset = load_model("world"), load_dataset(data / "train", DatasetLimits())
    concepts, suffixes = Concepts.load(concepts_dir), suffixes_for(params.metaclass, params.suffixes)
    made: dict[str, list[torch.Tensor]] = {"inversion": [], "noise": [], "circle": []}
    species = []
    with concepts_applied(model, concepts):
        uncond = encode_prompts(model, [""])
        for cls in dataset.classes:
            pool = invert_class(model, concepts, [i.open() for i in cls.images], cls.name, params)
            names = [str(i) for i in range(len(pool))]
            plans = [
                random_circle_interpolation(pool, names, suffixes, params, cls.name, i)
                for i in range(4 * len(pool))
            ]
            plain = concept_prompt(concepts.tokens[cls.name], params.metaclass)
            hidden = encode_prompts(model, [plain] + [f"{plain} {p.suffix}" for p in plans])
            starts = {
                "inversion": [pool[i % len(pool)] for i in range(len(plans))],
                "noise": [
                    torch.randn(pool.shape[1:], generator=torch.Generator().manual_seed(p.seed))
                    for p in plans
                ],
                "circle": [p.latent for p in plans],
            }
            for name, latents in starts.items():
                out = sample_two_stage(
                    model,
                    torch.stack(latents),
                    hidden[:1].expand(len(plans), -1, -1),
                    hidden[1:],
                    uncond,
                    params,
                )
                made[name].append(_pixels(decode_latents(model, out)))
            species += [domain.species_by_name(cls.name)] * len(plans)
    oracle = load_oracle()
    return {
        name: {
            k: round(v, 3) for k, v in attribute_accuracy(predict(oracle, torch.cat(images)), species).items()
        }
        for name, images in made.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="diff-ii", choices=sorted(METHODS))
    parser.add_argument("--lr", type=float, nargs="+", default=[None], help="token (and LoRA) rate")
    parser.add_argument("--lora-lr", type=float, nargs="+", default=[None], help="LoRA rate apart")
    parser.add_argument("--steps", type=int, nargs="+", default=[None])
    parser.add_argument("--tokens", type=int, nargs="+", default=[None], help="tokens per class")
    parser.add_argument("--init", nargs="+", default=[None], choices=["metaclass", "random", None])
    parser.add_argument("--rank", type=int, nargs="+", default=[None], help="LoRA rank")
    parser.add_argument("--cfg", type=float, nargs="+", default=[7.5])
    parser.add_argument("--dataset-seed", type=int, default=0)
    parser.add_argument("--starts", action="store_true", help="also by start: inversion, noise, circle")
    parser.add_argument("--out", type=Path, help="keep datasets, concepts and archives here")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # this process only: about 3x faster small networks on CPU
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        data = root / "data"
        if not (data / "train").exists():
            write_world_dataset(
                data, WorldDatasetSpec(classes=5, shots=5, seed=args.dataset_seed, test_per_class=1)
            )
        grid = itertools.product(
            args.lr, args.lora_lr, args.steps, args.tokens, args.init, args.rank, args.cfg
        )
        for lr, lora_lr, steps, tokens, init, rank, cfg in grid:
            given = {
                "learning_rate": lr,
                "lora_learning_rate": lora_lr,
                "steps": steps,
                "tokens_per_class": tokens,
                "placeholder_init": init,
                "lora_rank": rank,
            }
            concepts = {k: v for k, v in given.items() if v is not None}
            params = JobParams.model_validate(
                {
                    "model": "world",
                    "method": args.method,
                    "metaclass": domain.METACLASS,
                    "seed": 0,
                    "expansion": 4,
                    "guidance_scale": cfg,
                    "concepts": concepts,
                }
            )
            c = params.concepts
            lora = c.lora_learning_rate or c.learning_rate
            tag = (
                f"{args.method}-lr{c.learning_rate:g}-lora{lora:g}-steps{c.steps}"
                f"-tok{c.tokens_per_class}-{c.placeholder_init}-r{c.lora_rank}"
            )
            archive = root / f"{tag}-cfg{cfg:g}.zip"
            augment(data / "train", archive, params, batch_size=16, concepts_dir=root / f"concepts-{tag}")
            print(f"{tag} cfg {cfg:g}: {json.dumps(per_attribute(archive))}", flush=True)
            if args.starts and args.method == "diff-ii":
                for start, figures in by_start(data, root / f"concepts-{tag}", params).items():
                    print(f"{tag} cfg {cfg:g} from {start}: {json.dumps(figures)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
