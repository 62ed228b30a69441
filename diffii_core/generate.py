"""Two-stage denoising of planned start latents: the suffixed prompt for the early timesteps
(t >= T * (1 - split_ratio)), the plain concept prompt after; classifier-free guidance; batched.

Every output image is planned by its own generator seeded from (job seed, class, index), and the
networks never see a batch of one, so an image's bytes do not depend on the batch it was made in."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from diffii_core.ddim import Schedule, denoise, denoise_timesteps, suffix_steps
from diffii_core.errors import Cancelled
from diffii_core.images import decode_latents, png_bytes
from diffii_core.interpolation import angle, circle_interpolate, is_interpolation, pair_from_index
from diffii_core.models import LoadedModel
from diffii_core.params import JobParams
from diffii_core.prompts import concept_prompt, encode_prompts
from diffii_core.seeding import derive_seed
from diffii_core.suffixes import suffixes_for
from diffii_core.unet import predict_noise


@dataclass
class GeneratedImage:
    class_name: str
    label_index: int
    index: int
    image_id: str
    file_name: str  # "<class name>/<image id>.png": the path inside the archive
    png: bytes
    metadata: dict[str, Any]


@dataclass
class ImagePlan:
    """Everything random about one output image, drawn before any network runs."""

    index: int
    seed: int
    latent: torch.Tensor  # start latent at the first denoising timestep
    suffix: str | None
    record: dict[str, Any] = field(default_factory=dict)  # method-specific metadata (sources, phi...)


def image_id(label_index: int, index: int) -> str:
    return f"c{label_index:04d}-{index:06d}"


def plan_diff_ii(
    pool: torch.Tensor,
    source_names: list[str],
    suffixes: list[str],
    params: JobParams,
    class_name: str,
    index: int,
) -> ImagePlan:
    """A random pair of distinct inversions and a random phi on their great circle; a class of one image
    starts from fresh Gaussian noise (the paper's fallback; the published code crashed)."""
    seed = derive_seed(params.seed, "diff-ii", class_name, index)
    gen = torch.Generator().manual_seed(seed)
    n = pool.shape[0]
    if n >= 2:
        k = int(torch.randint(0, n * (n - 1) // 2, (1,), generator=gen))
        i, j = pair_from_index(k, n)
        phi = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 2 * math.pi
        theta = angle(pool[i], pool[j])
        latent = circle_interpolate(pool[i], pool[j], phi)
        record = {
            "init": "interpolation",
            "sources": [source_names[i], source_names[j]],
            "phi": phi,
            "theta": theta,
            "arc": "short" if is_interpolation(phi, theta) else "long",
        }
    else:
        latent = torch.randn(pool.shape[1:], generator=gen)
        record = {"init": "noise", "sources": list(source_names[:1]), "phi": None, "theta": None, "arc": None}
    suffix = suffixes[int(torch.randint(0, len(suffixes), (1,), generator=gen))] if suffixes else None
    return ImagePlan(index=index, seed=seed, latent=latent, suffix=suffix, record=record)


def sample_two_stage(
    model: LoadedModel,
    latents: torch.Tensor,
    plain: torch.Tensor,
    suffixed: torch.Tensor,
    uncond: torch.Tensor,
    params: JobParams,
    timesteps: list[int] | None = None,
) -> torch.Tensor:
    """Denoise latents [B, c, h, w]; plain/suffixed are per-image text states [B, 77, d]."""
    schedule = Schedule.from_config(model.scheduler_config)
    timesteps = timesteps or denoise_timesteps(model.scheduler_config, params.inference_steps)
    use_suffix = suffix_steps(timesteps, params.split_ratio, schedule.num_train_timesteps)
    batch = latents.shape[0]
    negative = uncond.expand(batch, -1, -1)
    guided = params.guidance_scale != 1.0

    def predict(x: torch.Tensor, t: int, step: int) -> torch.Tensor:
        cond = suffixed if use_suffix[step] else plain
        if not guided:
            return predict_noise(model, x, t, cond)
        eps = predict_noise(model, torch.cat([x, x]), t, torch.cat([negative, cond]))
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + params.guidance_scale * (eps_cond - eps_uncond)

    return denoise(latents.float(), predict, schedule, timesteps)


def generate_share(
    model: LoadedModel,
    concepts,
    pool: torch.Tensor | None,
    *,
    class_name: str,
    label_index: int,
    class_names: list[str],
    source_names: list[str],
    params: JobParams,
    start: int,
    stop: int,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    references: Sequence[Any] | None = None,
) -> Iterator[GeneratedImage]:
    """Images [start, stop) of one class by params.method. Diff-II draws from the class's inversion pool;
    the other methods (diffii_core.methods) ignore `pool` (may be None) and the img2img ones take the
    class's images as `references` (PIL images aligned with source_names). `concepts` must already be
    applied to `model` (apply_concepts); real-guidance / real-mix use the base model and may get None."""
    if params.method != "diff-ii":
        from diffii_core.methods import generate_baseline

        yield from generate_baseline(
            model, concepts, class_name=class_name, label_index=label_index, class_names=class_names,
            source_names=source_names, params=params, start=start, stop=stop, references=references,
            batch_size=batch_size, should_stop=should_stop,
        )  # fmt: skip
        return
    if pool is None:
        raise ValueError("diff-ii needs the class's inversion pool")
    suffixes = suffixes_for(params.metaclass, params.suffixes)
    tokens = concepts.tokens[class_name]
    plain_prompt = concept_prompt(tokens, params.metaclass)
    texts = [plain_prompt, ""] + [concept_prompt(tokens, params.metaclass, s) for s in suffixes]
    states = encode_prompts(model, texts)
    plain, uncond = states[0:1], states[1:2]
    by_suffix = dict(zip(suffixes, states[2:], strict=True))
    for first in range(start, stop, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped before image {first} of class {class_name!r}")
        plans = [
            plan_diff_ii(pool, source_names, suffixes, params, class_name, i)
            for i in range(first, min(stop, first + batch_size))
        ]
        latents = torch.stack([p.latent for p in plans])
        suffixed = torch.stack([by_suffix[p.suffix] if p.suffix else plain[0] for p in plans])
        out = sample_two_stage(model, latents, plain.expand(len(plans), -1, -1), suffixed, uncond, params)
        arrays = decode_latents(model, out)
        for plan, array in zip(plans, arrays, strict=True):
            yield finish_image(plan, array, class_name, label_index, params, "diff-ii")


def finish_image(
    plan: ImagePlan, array: np.ndarray, class_name: str, label_index: int, params: JobParams, method: str
) -> GeneratedImage:
    ident = image_id(label_index, plan.index)
    file_name = f"{class_name}/{ident}.png"
    metadata = {
        "file_name": file_name,
        "label": class_name,
        "label_index": label_index,
        "method": method,
        "seed": plan.seed,
        "image_index": plan.index,
        **plan.record,
        "suffix": plan.suffix,
        "split_ratio": params.split_ratio,
    }
    return GeneratedImage(class_name, label_index, plan.index, ident, file_name, png_bytes(array), metadata)
