"""DDIM inversion of a class's images with its concept prompt and no guidance: the inversion pool."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffii_core.denoising.prompts import concept_prompt, encode_prompts
from diffii_core.denoising.sampling import sampler_timesteps
from diffii_core.denoising.unet import predict_noise
from diffii_core.errors import ArtifactError
from diffii_core.images import encode_images, fit_square, to_tensor
from diffii_core.learning.concepts import Concepts, scope_key
from diffii_core.models import LoadedModel
from diffii_core.models.ddim import Schedule, inversion_timesteps, invert, published_inversion_timesteps
from diffii_core.oom import map_batches

if TYPE_CHECKING:
    from diffii_core.params import JobParams  # annotations only: params reads the methods' table


def schedule_for(model: LoadedModel, params: JobParams) -> list[int]:
    """Ascending inversion timesteps: diffusers' inverse DDIM schedule (published), or one that ends
    exactly where the job's denoising starts."""
    if params.inversion_schedule == "published":
        return published_inversion_timesteps(model.scheduler_config, params.inversion_steps)
    t_start = sampler_timesteps(model.scheduler_config, params.sampler, params.inference_steps)[0]
    return inversion_timesteps(t_start, params.inversion_steps)


def invert_latents(model: LoadedModel, latents: torch.Tensor, prompt: str, params: JobParams) -> torch.Tensor:
    """Invert clean latents [N, c, h, w] with `prompt` and no guidance."""
    schedule = Schedule.from_config(model.scheduler_config)
    timesteps = schedule_for(model, params)
    hidden = encode_prompts(model, [prompt])

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        return predict_noise(model, x, t, hidden.expand(x.shape[0], -1, -1))

    return invert(latents.float(), predict, schedule, timesteps)


def invert_class(
    model: LoadedModel,
    concepts: Concepts,
    images: list[Image.Image],
    class_name: str,
    params: JobParams,
    *,
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """The class's inversion pool [N, c, h, w], fp32 on the CPU. Images are fitted to the model's square
    (squashed, as published, unless params.image_geometry is "crop"). Run inside
    `concepts_applied(model, concepts)`."""
    if model.in_use != scope_key(concepts):
        raise RuntimeError("invert_class must run inside concepts_applied(model, concepts)")
    resolution = params.resolution or model.resolution
    prompt = concept_prompt(concepts.tokens[class_name], params.metaclass)
    geometry = params.image_geometry
    pixels = torch.stack([to_tensor(fit_square(image, resolution, geometry)) for image in images])

    def invert_batch(lo: int, hi: int) -> torch.Tensor:
        pool = invert_latents(model, encode_images(model, pixels[lo:hi], hi - lo), prompt, params)
        if progress is not None:
            progress(hi - lo)
        return pool

    # Out of GPU memory, a batch is halved and run again (oom.py): the pool does not change.
    return torch.cat(
        map_batches(invert_batch, pixels.shape[0], batch_size, f"inverting class {class_name!r}")
    )


def save_pool(pool: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"pool": pool.float().contiguous()}, str(path))


def load_pool(path: Path) -> torch.Tensor:
    try:
        return load_file(str(path))["pool"]
    except (OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"inversion pool {path} is missing or unreadable: {exc}") from exc
