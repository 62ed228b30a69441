"""diff-ii, the paper's own generation from a class's DDIM inversion pool (step 3, `inversion/`):

4. `random_circle_interpolation`  per image, a random pair of the class's inversions and a random point
                                  on their great circle (the image's start latent), and its suffix
5. `two_stage_denoising`          the suffixed concept prompt early, the plain one late (DDIM, as
                                  published), then decoded

The registry reads `SPEC` wherever a job is checked (the API too), so the engine (torch and the networks)
is imported only when images are made."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffii_core.errors import Cancelled
from diffii_core.methods.spec import MethodSpec, ShareRequest
from diffii_core.output.generated import GeneratedImage, image_id

if TYPE_CHECKING:
    import numpy as np
    import torch

    from diffii_core.models import LoadedModel
    from diffii_core.params import JobParams


@dataclass
class ImagePlan:
    """Everything random about one output image, drawn before any network runs."""

    index: int
    seed: int
    latent: torch.Tensor  # start latent at the first denoising timestep
    suffix: str | None
    record: dict[str, Any] = field(default_factory=dict)  # sources, phi, theta...


@dataclass
class ConceptPrompts:
    """The class's text states: its plain concept prompt, the unconditional one, one per suffix."""

    plain_text: str
    plain: torch.Tensor  # [1, 77, d]
    uncond: torch.Tensor  # [1, 77, d]
    by_suffix: dict[str, torch.Tensor]  # suffix -> [77, d]


def generate(spec: MethodSpec, req: ShareRequest) -> Iterator[GeneratedImage]:
    """Images [start, stop) of a class: step 4 then step 5 for each batch. `generate_share` checked the
    concepts; the inversion pool (step 3) is Diff-II's own need."""
    if req.pool is None:
        raise ValueError("diff-ii needs the class's inversion pool")
    suffixes, prompts = concept_prompts(req)
    for first in range(req.start, req.stop, req.batch_size):
        if req.should_stop is not None and req.should_stop():
            raise Cancelled(f"stopped before image {first} of class {req.class_name!r}")
        plans = [
            random_circle_interpolation(
                req.pool, req.source_names, suffixes, req.params, req.class_name, i, req.own_images
            )
            for i in range(first, min(req.stop, first + req.batch_size))
        ]
        arrays = two_stage_denoising(req.model, plans, prompts, req.params)
        for plan, array in zip(plans, arrays, strict=True):
            yield _finish(plan, array, req, prompts.plain_text)


def concept_prompts(req: ShareRequest) -> tuple[list[str], ConceptPrompts]:
    """The job's suffixes and the class's prompts, encoded in one batch (the plain prompt, the empty one,
    then one per suffix: the text encoder sees the same batch whichever images are made)."""
    from diffii_core.denoising.prompts import concept_prompt, encode_prompts
    from diffii_core.denoising.suffixes import suffixes_for

    assert req.concepts is not None  # generate_share refuses a concept method without them
    params = req.params
    suffixes = suffixes_for(params.metaclass, params.suffixes)
    tokens = req.concepts.tokens[req.class_name]
    plain_text = concept_prompt(tokens, params.metaclass)
    texts = [plain_text, ""] + [concept_prompt(tokens, params.metaclass, s) for s in suffixes]
    states = encode_prompts(req.model, texts)
    by_suffix = dict(zip(suffixes, states[2:], strict=True))
    return suffixes, ConceptPrompts(plain_text, states[0:1], states[1:2], by_suffix)


def random_circle_interpolation(
    pool: torch.Tensor, source_names: list[str], suffixes: list[str], params: JobParams, class_name: str,
    index: int, own: int | None = None,
) -> ImagePlan:  # fmt: skip
    """Step 4, random circle interpolation: a random pair of distinct inversions and a random phi on
    their great circle; a class of one image starts from fresh Gaussian noise (the paper's fallback; the
    published code crashed). Also draws the image's suffix for step 5.

    When the pool holds borrowed inversions after its `own` rows (fill_pool_to), the pair is one of the
    class's own inversions and any other row of the pool, so every image starts near a real image of
    its class."""
    import torch

    from diffii_core.inversion.interpolation import (
        angle,
        circle_interpolate,
        is_interpolation,
        pair_from_index,
    )
    from diffii_core.seeding import derive_seed

    seed = derive_seed(params.seed, "diff-ii", class_name, index)
    gen = torch.Generator().manual_seed(seed)
    n = pool.shape[0]
    own = n if own is None else own
    if n >= 2:
        if own < n:
            i = int(torch.randint(0, own, (1,), generator=gen))
            j = int(torch.randint(0, n - 1, (1,), generator=gen))
            if j >= i:
                j += 1
        else:
            k = int(torch.randint(0, n * (n - 1) // 2, (1,), generator=gen))
            i, j = pair_from_index(k, n)
        phi = float(torch.rand(1, generator=gen, dtype=torch.float64)) * 2 * math.pi
        theta = angle(pool[i], pool[j])
        latent = circle_interpolate(pool[i], pool[j], phi)
        record = {
            "init": "interpolation" if j < own else "interpolation with a borrowed image",
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


def two_stage_denoising(
    model: LoadedModel, plans: list[ImagePlan], prompts: ConceptPrompts, params: JobParams
) -> list[np.ndarray]:
    """Step 5, two-stage denoising: each start latent under its suffixed prompt while t >= T (1 -
    split_ratio), then the plain prompt, with classifier-free guidance; decoded to uint8 images."""
    import torch

    from diffii_core.denoising.sampling import sample_two_stage
    from diffii_core.images import decode_latents

    latents = torch.stack([p.latent for p in plans])
    suffixed = torch.stack([prompts.by_suffix[p.suffix] if p.suffix else prompts.plain[0] for p in plans])
    plain = prompts.plain.expand(len(plans), -1, -1)
    out = sample_two_stage(model, latents, plain, suffixed, prompts.uncond, params)
    return list(decode_latents(model, out))


def _finish(plan: ImagePlan, array: np.ndarray, req: ShareRequest, plain_prompt: str) -> GeneratedImage:
    from diffii_core.images import png_bytes

    ident = image_id(req.label_index, plan.index)
    file_name = f"{req.class_name}/{ident}.png"
    metadata = {
        "file_name": file_name,
        "label": req.class_name,
        "label_index": req.label_index,
        "method": "diff-ii",
        "seed": plan.seed,
        "image_index": plan.index,
        **plan.record,
        "suffix": plan.suffix,
        "prompt": f"{plain_prompt} {plan.suffix}" if plan.suffix else plain_prompt,
        "split_ratio": req.params.split_ratio,
        "sampler": req.params.sampler,
    }
    return GeneratedImage(
        req.class_name, req.label_index, plan.index, ident, file_name, png_bytes(array), metadata
    )


SPEC = MethodSpec(
    name="diff-ii",
    summary="interpolate two inversions of a class on their great circle; suffixed prompt early",
    generate=generate,
    inversion=True,
    sampler="ddim",
)
