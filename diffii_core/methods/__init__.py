"""Every augmentation method, one module each, and the registry that the CLI, the API's validation, the
worker and `augment` read. A new method is a module with a `SPEC` and one line below.

The method modules import the engine (sampling, prompts, images), never `diffii_core.params` at run
time, so `params` can read this registry without an import cycle."""

from __future__ import annotations

from diffii_core.methods import (
    da_fusion,
    diff_aug,
    diff_gen,
    diff_ii,
    diff_mix,
    real_filter,
    real_guidance,
    real_mix,
)
from diffii_core.methods.spec import MethodSpec, ShareRequest

METHODS: dict[str, MethodSpec] = {
    m.SPEC.name: m.SPEC
    for m in (diff_ii, diff_mix, diff_aug, diff_gen, real_guidance, real_mix, real_filter, da_fusion)
}

__all__ = ["METHODS", "MethodSpec", "ShareRequest"]
