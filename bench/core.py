"""Diff-II on the tiny model: images per second and efficiency for 64/128 px at batch 1 and 8.

efficiency = (time inside the UNet, VAE and text-encoder forwards) / (total time of the same work):
how much of the wall time the engine's own Python (planning, interpolation, PNG) costs on top.
Work measured: the inversion pool of one class plus its generated images (concept learning is a
one-off per job and reported apart). Run: `make bench` or `python bench/core.py [--images N]`."""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch

from diffii_core.dataset import load_dataset
from diffii_core.inversion.invert import invert_class
from diffii_core.learning.concepts import concepts_applied
from diffii_core.learning.training import learn_concepts
from diffii_core.models import load_model
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline.generate import generate_share
from diffii_core.sample_data import write_sample_dataset


class ForwardClock:
    """Adds up the wall time spent inside the networks' forwards."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - began

        return timed


def run(resolution: int, batch_size: int, images: int, dataset, concepts_steps: int) -> dict[str, float]:
    model = load_model("tiny")
    params = JobParams(seed=1, resolution=resolution, concepts=ConceptParams(steps=concepts_steps))
    concepts = learn_concepts(model, dataset, params)
    clock = ForwardClock()
    model.unet.forward = clock.wrap(model.unet.forward)
    model.text_encoder.forward = clock.wrap(model.text_encoder.forward)
    model.vae.encode = clock.wrap(model.vae.encode)
    model.vae.decode = clock.wrap(model.vae.decode)
    cls = max(dataset.classes, key=lambda c: len(c.images))
    began = time.perf_counter()
    with concepts_applied(model, concepts):
        pool = invert_class(
            model, concepts, [i.open() for i in cls.images], cls.name, params, batch_size=batch_size
        )
        made = sum(
            1
            for _ in generate_share(
                model, concepts, pool, class_name=cls.name, label_index=cls.index,
                class_names=dataset.class_names(), source_names=[i.path for i in cls.images],
                params=params, start=0, stop=images, batch_size=batch_size,
            )
        )  # fmt: skip
    total = time.perf_counter() - began
    return {"images_per_s": made / total, "efficiency": clock.seconds / total, "seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="generated images per configuration")
    parser.add_argument("--concept-steps", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(write_sample_dataset(Path(tmp) / "data"))
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.images} images per row,"
            f" 25 denoising + 50 inversion steps, CFG 7.5"
        )
        print(f"{'px':>4} {'batch':>5} {'images/s':>9} {'efficiency':>10} {'seconds':>8}")
        results = {}
        for resolution in (64, 128):
            for batch in (1, 8):
                r = run(resolution, batch, args.images, dataset, args.concept_steps)
                results[(resolution, batch)] = r
                row = f"{r['images_per_s']:>9.2f} {r['efficiency']:>10.3f} {r['seconds']:>8.1f}"
                print(f"{resolution:>4} {batch:>5} {row}")
        for resolution in (64, 128):
            speedup = results[(resolution, 8)]["images_per_s"] / results[(resolution, 1)]["images_per_s"]
            print(f"{resolution} px: batch 8 makes {speedup:.2f}x the images per second of batch 1")
        e = results[(128, 8)]["efficiency"]
        s = results[(128, 8)]["images_per_s"] / results[(128, 1)]["images_per_s"]
        print(
            f"targets at 128 px, batch 8: efficiency {e:.3f} (>= 0.8: {'met' if e >= 0.8 else 'NOT met'}),"
            f" speed-up {s:.2f}x (>= 2.5: {'met' if s >= 2.5 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
