"""The seed papers' baselines on the same engine: img2img (SDEdit) from a real reference image, or text to
image, with a learned concept prompt or the plain class name on the base model.

- diff-mix: a random image of the class, the concept of a target drawn over all classes, soft label
- real-mix: as diff-mix with the plain target class name on the base model, soft label
- diff-aug: a random image of the class, its own concept, hard label
- real-guidance: a random image of the class, the plain class name on the base model, hard label
- da-fusion: as diff-aug with the strength drawn per image from a list, hard label
- diff-gen: no reference (text to image), its own concept, hard label

img2img with strength s: the reference is encoded by the VAE (posterior mean times the scaling factor),
noised with the image's own generator to the first of the last round(s * steps) DDIM timesteps, and
denoised over those steps with classifier-free guidance. s = 1 ignores the reference: pure noise, all
steps. Each image is planned by its own generator seeded from (job seed, method, class, index); prompts
are encoded one at a time and the networks never see a batch of one, so an image's bytes do not depend
on the batch it was made in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffii_core.concepts import apply_concepts
from diffii_core.ddim import Schedule, denoise_timesteps
from diffii_core.errors import Cancelled
from diffii_core.generate import GeneratedImage, image_id, sample_two_stage
from diffii_core.images import decode_latents, encode_images, png_bytes, to_square, to_tensor
from diffii_core.models import LoadedModel
from diffii_core.params import SOFT_LABEL_METHODS, JobParams, strengths, uses_concepts, uses_references
from diffii_core.prompts import concept_prompt, encode_prompts, name_prompt
from diffii_core.seeding import derive_seed

MIX_METHODS = frozenset({"diff-mix", "real-mix"})


def soft_label(
    n_classes: int, source: int, target: int, strength: float, kappa: float, gamma: float
) -> list[float]:
    """Diff-Mix's label: y[source] += kappa * (1 - s**gamma), y[target] += kappa * s**gamma.
    The vector sums to kappa; source == target gives a hard label of mass kappa."""
    y = [0.0] * n_classes
    w = strength**gamma
    y[source] += kappa * (1.0 - w)
    y[target] += kappa * w
    return y


def denoise_steps(strength: float, steps: int) -> int:
    """How many of the `steps` DDIM steps an image of strength s runs: round(s * steps), at least 1."""
    return max(1, min(steps, round(strength * steps)))


def img2img_timesteps(config: dict[str, Any], steps: int, strength: float) -> list[int]:
    """The tail of the DDIM schedule that an image of strength s is denoised over."""
    timesteps = denoise_timesteps(config, steps)
    return timesteps[len(timesteps) - denoise_steps(strength, steps) :]


@dataclass
class BaselinePlan:
    """Everything random about one output image, drawn before any network runs."""

    index: int
    seed: int
    reference: int | None  # index into the class's images; None: text to image
    target: int  # class index of the prompt
    strength: float
    noise: torch.Tensor  # [c, h, w]
    record: dict[str, Any] = field(default_factory=dict)


def plan_baseline(
    params: JobParams, class_name: str, label_index: int, n_classes: int, n_references: int, index: int,
    latent_shape: tuple[int, ...],
) -> BaselinePlan:  # fmt: skip
    """Draws, in this order: reference, target class, strength, start noise."""
    method = params.method
    seed = derive_seed(params.seed, method, class_name, index)
    gen = torch.Generator().manual_seed(seed)
    reference = None
    if uses_references(method):
        reference = int(torch.randint(0, n_references, (1,), generator=gen))
    target = label_index
    if method in MIX_METHODS:
        target = int(torch.randint(0, n_classes, (1,), generator=gen))
    pool = strengths(params)
    strength = pool[int(torch.randint(0, len(pool), (1,), generator=gen))] if len(pool) > 1 else pool[0]
    if method == "diff-gen":
        strength = 1.0
    noise = torch.randn(latent_shape, generator=gen)
    return BaselinePlan(index, seed, reference, target, float(strength), noise)


def _label(plan: BaselinePlan, label_index: int, params: JobParams) -> int:
    """The hard label: the class with the larger soft-label weight (the target on a tie, s**gamma = 0.5)."""
    if params.method not in MIX_METHODS:
        return label_index
    return plan.target if plan.strength**params.gamma >= 0.5 else label_index


def generate_baseline(
    model: LoadedModel,
    concepts,
    *,
    class_name: str,
    label_index: int,
    class_names: list[str],
    source_names: list[str],
    params: JobParams,
    start: int,
    stop: int,
    references: Sequence[Image.Image] | None = None,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[GeneratedImage]:
    """Images [start, stop) of one class for a baseline method. `references` are the class's images
    (aligned with source_names), needed by every img2img method. For methods with concepts, `concepts`
    must already be applied to `model`; real-guidance / real-mix run the base model and ignore them."""
    method = params.method
    if uses_references(method) and not references:
        raise ValueError(f"method {method!r} needs the class's reference images")
    if uses_concepts(method):
        if concepts is None:
            raise ValueError(f"method {method!r} needs learned concepts")
    else:
        apply_concepts(model, None)  # the base model: no LoRA; the prompt names no placeholder token
    resolution = params.resolution or model.resolution
    side = resolution // model.vae_scale
    shape = (model.latent_channels, side, side)
    schedule = Schedule.from_config(model.scheduler_config)
    n_refs = len(references) if references else 0

    states: dict[int, torch.Tensor] = {}

    def state(target: int) -> torch.Tensor:
        # One prompt per call: the text encoder sees the same batch whichever images share this batch.
        if target not in states:
            name = class_names[target]
            if uses_concepts(method):
                text = concept_prompt(concepts.tokens[name], params.metaclass)
            else:
                text = name_prompt(name, params.metaclass)
            states[target] = encode_prompts(model, [text])[0]
        return states[target]

    uncond = encode_prompts(model, [""])
    for first in range(start, stop, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped before image {first} of class {class_name!r}")
        plans = [
            plan_baseline(params, class_name, label_index, len(class_names), n_refs, i, shape)
            for i in range(first, min(stop, first + batch_size))
        ]
        # Start latents: the noised reference, or pure noise at strength 1 / text to image.
        noised = [p for p in plans if p.reference is not None and p.strength < 1.0]
        clean: dict[int, torch.Tensor] = {}
        if noised:
            pixels = torch.stack([to_tensor(to_square(references[p.reference], resolution)) for p in noised])
            clean = dict(
                zip([p.index for p in noised], encode_images(model, pixels, len(noised)), strict=True)
            )
        outputs: dict[int, torch.Tensor] = {}
        for n in sorted({denoise_steps(p.strength, params.inference_steps) for p in plans}, reverse=True):
            group = [p for p in plans if denoise_steps(p.strength, params.inference_steps) == n]
            timesteps = img2img_timesteps(model.scheduler_config, params.inference_steps, group[0].strength)
            alpha = schedule.alpha(timesteps[0])
            latents = []
            for p in group:
                if p.index in clean:
                    latents.append(math.sqrt(alpha) * clean[p.index] + math.sqrt(1.0 - alpha) * p.noise)
                else:
                    latents.append(p.noise)
            cond = torch.stack([state(p.target) for p in group])
            out = sample_two_stage(
                model, torch.stack(latents), cond, cond, uncond, params, timesteps=timesteps
            )
            outputs.update(zip([p.index for p in group], out, strict=True))
        arrays = decode_latents(model, torch.stack([outputs[p.index] for p in plans]))
        for plan, array in zip(plans, arrays, strict=True):
            if params.resize_to_source and plan.reference is not None:
                size = references[plan.reference].size
                if size != (array.shape[1], array.shape[0]):
                    array = np.asarray(Image.fromarray(array).resize(size, Image.Resampling.BICUBIC))
            yield _finish(plan, array, class_name, label_index, class_names, source_names, params)


def _finish(
    plan: BaselinePlan, array: np.ndarray, class_name: str, label_index: int, class_names: list[str],
    source_names: list[str], params: JobParams,
) -> GeneratedImage:  # fmt: skip
    label = _label(plan, label_index, params)
    # The id keeps the source class's index, so ids stay unique when a mix is filed under its target.
    ident = image_id(label_index, plan.index)
    file_name = f"{class_names[label]}/{ident}.png"
    soft = None
    if params.method in SOFT_LABEL_METHODS:
        soft = soft_label(
            len(class_names), label_index, plan.target, plan.strength, params.kappa, params.gamma
        )
    metadata = {
        "file_name": file_name,
        "label": class_names[label],
        "label_index": label,
        "method": params.method,
        "seed": plan.seed,
        "image_index": plan.index,
        "init": "reference" if plan.reference is not None and plan.strength < 1.0 else "noise",
        "sources": [source_names[plan.reference]] if plan.reference is not None else [],
        "source_class": class_name,
        "source_index": label_index,
        "target": class_names[plan.target],
        "target_index": plan.target,
        "strength": plan.strength,
        "denoise_steps": denoise_steps(plan.strength, params.inference_steps),
        "soft_label": soft,
        "kappa": params.kappa if soft is not None else None,
        "gamma": params.gamma if soft is not None else None,
        "suffix": None,
        "split_ratio": params.split_ratio,
        "size": [int(array.shape[1]), int(array.shape[0])],
    }
    return GeneratedImage(class_names[label], label, plan.index, ident, file_name, png_bytes(array), metadata)
