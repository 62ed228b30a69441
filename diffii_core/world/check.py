"""The world model's quality gates (`diffii world check`): each a figure measured with the oracle on
images the model made through the engine's own paths (VAE, sampling, inversion, `augment`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffii_core.denoising.prompts import encode_prompts
from diffii_core.denoising.sampling import sample_two_stage
from diffii_core.images import decode_latents, encode_images
from diffii_core.inversion.invert import invert_latents
from diffii_core.models import LoadedModel, load_model
from diffii_core.models.ddim import denoise_timesteps
from diffii_core.params import JobParams
from diffii_core.seeding import generator
from diffii_core.world import domain
from diffii_core.world.oracle import Oracle, attributes_right, load_oracle, predict, to_batch

# The engine's own default, so the gates judge the model as `diffii augment` runs it.
GUIDANCE: float = JobParams.model_fields["guidance_scale"].default

TARGETS = {
    "oracle_accuracy": 0.95,
    "vae_attribute_accuracy": 0.90,
    "t2i_attribute_accuracy_seen": 0.85,
    "t2i_attribute_accuracy_heldout": 0.60,
    "inversion_attribute_accuracy": 0.90,
    "diffii_faithfulness": 0.80,
}
Say = Callable[[str], None]


def _real(species: list[domain.Species], seed: int) -> tuple[torch.Tensor, list[int]]:
    images, contexts = [], []
    for i, s in enumerate(species):
        image, context = domain.sample_image(s, domain.image_rng(seed, s.index, i))
        images.append(image)
        contexts.append(context)
    return to_batch(images), contexts


def _pixels(arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arrays.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _draw(pool: tuple[domain.Species, ...], count: int, seed: int) -> list[domain.Species]:
    rng = np.random.default_rng([seed, count])
    return [pool[int(i)] for i in rng.integers(len(pool), size=count)]


def text_to_image(
    model: LoadedModel, prompts: list[str], seed: int, batch: int = 32, guidance_scale: float = GUIDANCE
) -> np.ndarray:
    """25-step DDIM with CFG, one seeded generator per image: uint8 [N, H, W, 3]."""
    params = JobParams(
        model=model.name,
        preset="quick",
        sampler="ddim",
        metaclass=domain.METACLASS,
        seed=seed,
        guidance_scale=guidance_scale,
    )
    shape = (model.latent_channels, model.resolution // model.vae_scale, model.resolution // model.vae_scale)
    uncond = encode_prompts(model, [""])
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        latents = torch.stack(
            [torch.randn(shape, generator=generator(seed, "t2i", start + i)) for i in range(len(chunk))]
        )
        hidden = encode_prompts(model, chunk)
        out.append(decode_latents(model, sample_two_stage(model, latents, hidden, hidden, uncond, params)))
    return np.concatenate(out)


def reconstruct_from_inversion(model: LoadedModel, pixels: torch.Tensor, prompts: list[str]) -> np.ndarray:
    """Invert each image with its caption (50 steps, no guidance) and denoise it back (25 steps)."""
    params = JobParams(
        model=model.name, preset="quick", sampler="ddim", metaclass=domain.METACLASS, guidance_scale=1.0
    )
    latents = encode_images(model, pixels, batch_size=32)
    out = []
    for i in range(latents.shape[0]):
        inverted = invert_latents(model, latents[i : i + 1], prompts[i], params)
        hidden = encode_prompts(model, [prompts[i]])
        out.append(decode_latents(model, sample_two_stage(model, inverted, hidden, hidden, hidden, params)))
    return np.concatenate(out)


def diffii_faithfulness(
    models: dict[str, str], oracle: Oracle, seed: int, say: Say, guidance_scale: float = GUIDANCE
) -> float:
    """Share of Diff-II images of a 5-shot, 5-class evaluation dataset whose attributes are their class's,
    made with the world's defaults (its quick preset)."""
    from diffii_core.pipeline.augment import augment
    from diffii_core.world.datasets import WorldDatasetSpec, write_world_dataset
    from diffii_core.world.sheets import archive_images

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        write_world_dataset(data, WorldDatasetSpec(classes=5, shots=5, seed=seed, test_per_class=1))
        params = JobParams.model_validate(
            {
                "model": "world",
                "metaclass": domain.METACLASS,
                "seed": seed,
                "expansion": 4,
                "guidance_scale": guidance_scale,
            }
        )
        say(f"diffii faithfulness: augment 5 classes x 5 shots, {params.concepts.steps} concept steps")
        augment(data / "train", Path(tmp) / "out.zip", params, models=models, batch_size=16)
        made = archive_images(Path(tmp) / "out.zip")
    images = [image for class_images in made.values() for image in class_images]
    species = [domain.species_by_name(name) for name, class_images in made.items() for _ in class_images]
    return float(attributes_right(predict(oracle, to_batch(images)), species).float().mean())


def run_checks(
    model_dir: Path | None = None,
    *,
    samples: int = 200,
    seed: int = 0,
    say: Say = print,
    faithfulness: bool = True,
    guidance_scale: float = GUIDANCE,
) -> dict[str, Any]:
    """Every gate's figure, the targets, and which were met."""
    models = {"world": str(model_dir) if model_dir else "world"}
    model = load_model("world", models, device="cpu")
    oracle = load_oracle()
    pre, held = domain.pretraining_species(), domain.evaluation_species()
    report: dict[str, Any] = {}

    say("oracle on fresh real images")
    eval_species = _draw(held, samples, seed)
    real, contexts = _real(eval_species, seed + 1)
    report["oracle_accuracy"] = float(attributes_right(predict(oracle, real), eval_species).float().mean())

    say("VAE reconstructions of evaluation species")
    recon = _pixels(decode_latents(model, encode_images(model, real, batch_size=64)))
    report["vae_attribute_accuracy"] = float(
        attributes_right(predict(oracle, recon), eval_species).float().mean()
    )

    for name, pool in (("seen", pre), ("heldout", held)):
        say(f"text to image, {name} species")
        drawn = _draw(pool, samples, seed + 2)
        ctx = np.random.default_rng([seed, 3]).integers(len(domain.CONTEXTS), size=samples)
        prompts = [domain.caption(s, int(c)) for s, c in zip(drawn, ctx, strict=True)]
        began = time.monotonic()
        made = text_to_image(model, prompts, seed, guidance_scale=guidance_scale)
        if name == "seen":
            report["images_per_second"] = samples / (time.monotonic() - began)
        pred = predict(oracle, _pixels(made))
        report[f"t2i_attribute_accuracy_{name}"] = float(attributes_right(pred, drawn).float().mean())
        report[f"t2i_context_accuracy_{name}"] = float(
            (pred["context"] == torch.from_numpy(ctx)).float().mean()
        )

    say("DDIM inversion and reconstruction of evaluation species")
    n_inv = min(samples, 64)
    prompts = [domain.caption(s, c) for s, c in zip(eval_species[:n_inv], contexts[:n_inv], strict=True)]
    rebuilt = _pixels(reconstruct_from_inversion(model, real[:n_inv], prompts))
    report["inversion_attribute_accuracy"] = float(
        attributes_right(predict(oracle, rebuilt), eval_species[:n_inv]).float().mean()
    )
    if faithfulness:
        report["diffii_faithfulness"] = diffii_faithfulness(models, oracle, seed, say, guidance_scale)
    report["targets"] = TARGETS
    report["met"] = {k: report[k] >= v for k, v in TARGETS.items() if k in report}
    report["samples"] = samples
    report["guidance_scale"] = guidance_scale
    report["denoise_steps"] = len(denoise_timesteps(model.scheduler_config, 25))
    return report


def vae_report(work_dir: Path, *, samples: int = 400, seed: int = 99) -> dict[str, float]:
    """The VAE gate on a training checkpoint, before any UNet is trained on its latents: PSNR and the
    oracle on reconstructions of evaluation-species images (all four attributes, and each one)."""
    from diffii_core.world.oracle import attribute_accuracy
    from diffii_core.world.train import Recipe, _load_checkpoint, centred_vae

    state = _load_checkpoint(work_dir / "vae.pt")
    if state is None:
        raise FileNotFoundError(f"no VAE checkpoint in {work_dir}")
    vae = centred_vae(work_dir, Recipe(**{**state["recipe"], "vae_stats_images": 512}))
    held = domain.evaluation_species()
    species = [held[i % len(held)] for i in range(samples)]
    real = to_batch([domain.sample_image(s, domain.image_rng(seed, i))[0] for i, s in enumerate(species)])
    with torch.no_grad():
        recon = torch.cat(
            [vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) for x in real.split(100)]
        )
    oracle = load_oracle()
    accuracy = attribute_accuracy(predict(oracle, recon), species)
    return {
        "vae_steps": float(state["step"]),
        "psnr_db": float(10 * torch.log10(4 / ((recon - real) ** 2).mean())),
        "oracle_on_real": float(attributes_right(predict(oracle, real), species).float().mean()),
        "vae_attribute_accuracy": accuracy.pop("all"),
        **{f"{name}_accuracy": value for name, value in accuracy.items()},
    }
