"""The img2img / text-to-image sampler that the seed papers' baselines share (diff-mix, real-mix,
diff-aug, real-guidance, real-filter, da-fusion, diff-gen): step 5 of a baseline, in place of Diff-II's
inversion, interpolation and two-stage denoising. Each of those method modules names `img2img` as its
`generate`; Real-Filter adds its classifier around `plans_for`, `render` and `finish`.

img2img with strength s: the reference is fitted to the model's square (squashed by default, as the
published code resizes), encoded by the VAE (posterior mean times the scaling factor), noised with the
image's own generator to the first of the last int(s * steps) timesteps, and denoised over those steps
with classifier-free guidance; the output is resized back to the reference's size. s = 1 ignores the
reference: pure noise, all steps. Each image is planned by its own generator seeded from
(job seed, method, class, index[, attempt]); prompts are encoded one at a time and the networks never
see a batch of one, so an image's bytes do not depend on the batch it was made in.

The registry reads the method modules wherever a job is checked (the API too, without torch), so the
engine (torch, the networks, the samplers) is imported inside the functions that make images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffii_core.errors import Cancelled
from diffii_core.output.generated import GeneratedImage, image_id

if TYPE_CHECKING:
    import numpy as np
    import torch

    from diffii_core.methods.spec import MethodSpec, ShareRequest
    from diffii_core.params import JobParams


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


@dataclass
class BaselinePlan:
    """Everything random about one output image, drawn before any network runs."""

    index: int
    seed: int
    reference: int | None  # index into the class's images; None: text to image
    target: int  # class index of the prompt
    strength: float
    noise: torch.Tensor  # [c, h, w]
    attempt: int = 0


def method_strengths(spec: MethodSpec, params: JobParams) -> list[float]:
    return list(params.strength) if params.strength is not None else list(spec.strengths)


def plan_baseline(
    spec: MethodSpec, params: JobParams, class_name: str, label_index: int, n_classes: int,
    n_references: int, index: int, latent_shape: tuple[int, ...], attempt: int = 0,
) -> BaselinePlan:  # fmt: skip
    """Draws, in this order: reference, target class, strength, start noise."""
    import torch

    from diffii_core.seeding import derive_seed

    key = (params.seed, spec.name, class_name, index) + ((attempt,) if attempt else ())
    seed = derive_seed(*key)
    gen = torch.Generator().manual_seed(seed)
    reference = int(torch.randint(0, n_references, (1,), generator=gen)) if spec.references else None
    target = int(torch.randint(0, n_classes, (1,), generator=gen)) if spec.mix else label_index
    pool = method_strengths(spec, params)
    strength = pool[int(torch.randint(0, len(pool), (1,), generator=gen))] if len(pool) > 1 else pool[0]
    if not spec.references:
        strength = 1.0
    noise = torch.randn(latent_shape, generator=gen)
    return BaselinePlan(index, seed, reference, target, float(strength), noise, attempt)


def hard_label(spec: MethodSpec, plan: BaselinePlan, label_index: int, params: JobParams) -> int:
    """The class with the larger soft-label weight (the target on a tie, s**gamma = 0.5)."""
    if not spec.mix:
        return label_index
    return plan.target if plan.strength**params.gamma >= 0.5 else label_index


def prompt_text(spec: MethodSpec, req: ShareRequest, target: int) -> str:
    from diffii_core.denoising.prompts import class_prompt_name, concept_prompt, name_prompt

    name = req.class_names[target]
    if spec.prompt == "concept":
        assert req.concepts is not None
        return concept_prompt(req.concepts.tokens[name], req.params.metaclass)
    return name_prompt(class_prompt_name(name, req.params.class_prompts), req.params.metaclass)


def check_references(spec: MethodSpec, req: ShareRequest) -> None:
    """The img2img methods start from the class's own images (generate_share checks the concepts)."""
    if spec.references and not req.references:
        raise ValueError(f"method {spec.name!r} needs the class's reference images")


def render(
    spec: MethodSpec, req: ShareRequest, plans: list[BaselinePlan], prompts: dict[int, str]
) -> list[np.ndarray]:
    """uint8 images for a batch of plans, each at its reference's size when resizing back."""
    import math

    import numpy as np
    import torch
    from PIL import Image

    from diffii_core.denoising.prompts import encode_prompts
    from diffii_core.denoising.sampling import denoise_steps, img2img_timesteps, sample_two_stage
    from diffii_core.images import decode_latents, encode_images, fit_square, to_tensor
    from diffii_core.models.ddim import Schedule

    model, params = req.model, req.params
    resolution = params.resolution or model.resolution
    config = model.scheduler_config
    schedule = Schedule.from_config(config)
    states: dict[int, torch.Tensor] = {}

    def state(target: int) -> torch.Tensor:
        # One prompt per call: the text encoder sees the same batch whichever images share this batch.
        if target not in states:
            states[target] = encode_prompts(model, [prompts[target]])[0]
        return states[target]

    uncond = encode_prompts(model, [""])
    noised = [p for p in plans if p.reference is not None and p.strength < 1.0]
    clean: dict[int, torch.Tensor] = {}
    if noised:
        refs = req.references or []
        pixels = [to_tensor(fit_square(refs[p.reference], resolution, params.image_geometry)) for p in noised]
        clean = dict(zip([id(p) for p in noised], encode_images(model, torch.stack(pixels)), strict=True))
    outputs: dict[int, torch.Tensor] = {}
    steps = params.inference_steps
    for n in sorted({denoise_steps(p.strength, steps) for p in plans}, reverse=True):
        group = [p for p in plans if denoise_steps(p.strength, steps) == n]
        timesteps = img2img_timesteps(config, params.sampler, steps, group[0].strength)
        alpha = schedule.alpha(timesteps[0])
        latents = [
            math.sqrt(alpha) * clean[id(p)] + math.sqrt(1.0 - alpha) * p.noise if id(p) in clean else p.noise
            for p in group
        ]
        cond = torch.stack([state(p.target) for p in group])
        out = sample_two_stage(model, torch.stack(latents), cond, cond, uncond, params, timesteps)
        outputs.update(zip([id(p) for p in group], out, strict=True))
    arrays = list(decode_latents(model, torch.stack([outputs[id(p)] for p in plans])))
    if params.resize_to_source and req.references:
        for k, plan in enumerate(plans):
            if plan.reference is not None:
                size = req.references[plan.reference].size
                if size != (arrays[k].shape[1], arrays[k].shape[0]):
                    resized = Image.fromarray(arrays[k]).resize(size, Image.Resampling.BICUBIC)
                    arrays[k] = np.asarray(resized)
    return arrays


def plans_for(
    spec: MethodSpec, req: ShareRequest, indices: list[int], attempt: int = 0
) -> list[BaselinePlan]:
    model = req.model
    side = (req.params.resolution or model.resolution) // model.vae_scale
    shape = (model.latent_channels, side, side)
    n_refs = len(req.references) if req.references else 0
    return [
        plan_baseline(
            spec, req.params, req.class_name, req.label_index, len(req.class_names), n_refs, i, shape, attempt
        )
        for i in indices
    ]


def img2img(spec: MethodSpec, req: ShareRequest) -> Iterator[GeneratedImage]:
    """Step 5 of a baseline: images [start, stop) of one class by img2img, or text to image."""
    check_references(spec, req)
    prompts = {t: prompt_text(spec, req, t) for t in range(len(req.class_names))} if spec.mix else {}
    prompts.setdefault(req.label_index, prompt_text(spec, req, req.label_index))
    for first in range(req.start, req.stop, req.batch_size):
        if req.should_stop is not None and req.should_stop():
            raise Cancelled(f"stopped before image {first} of class {req.class_name!r}")
        plans = plans_for(spec, req, list(range(first, min(req.stop, first + req.batch_size))))
        for plan, array in zip(plans, render(spec, req, plans, prompts), strict=True):
            yield finish(spec, req, plan, array, prompts[plan.target])


def finish(
    spec: MethodSpec, req: ShareRequest, plan: BaselinePlan, array: np.ndarray, prompt: str,
    extra: dict | None = None,
) -> GeneratedImage:  # fmt: skip
    from diffii_core.denoising.sampling import denoise_steps
    from diffii_core.images import png_bytes

    params, class_names, label_index = req.params, req.class_names, req.label_index
    label = hard_label(spec, plan, label_index, params)
    # The id keeps the source class's index, so ids stay unique when a mix is filed under its target.
    ident = image_id(label_index, plan.index)
    file_name = f"{class_names[label]}/{ident}.png"
    soft = None
    if spec.label == "soft":
        soft = soft_label(
            len(class_names), label_index, plan.target, plan.strength, params.kappa, params.gamma
        )
    metadata = {
        "file_name": file_name,
        "label": class_names[label],
        "label_index": label,
        "method": spec.name,
        "seed": plan.seed,
        "image_index": plan.index,
        "init": "reference" if plan.reference is not None and plan.strength < 1.0 else "noise",
        "sources": [req.source_names[plan.reference]] if plan.reference is not None else [],
        "source_class": req.class_name,
        "source_index": label_index,
        "target": class_names[plan.target],
        "target_index": plan.target,
        "strength": plan.strength,
        "denoise_steps": denoise_steps(plan.strength, params.inference_steps),
        "sampler": params.sampler,
        "prompt": prompt,
        "soft_label": soft,
        "kappa": params.kappa if soft is not None else None,
        "gamma": params.gamma if soft is not None else None,
        "suffix": None,
        "split_ratio": params.split_ratio,
        "size": [int(array.shape[1]), int(array.shape[0])],
        **(extra or {}),
    }
    return GeneratedImage(class_names[label], label, plan.index, ident, file_name, png_bytes(array), metadata)
