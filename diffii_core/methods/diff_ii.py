"""diff-ii: interpolate two DDIM inversions of a class on their great circle and denoise in two stages
(the implementation is in `circle.py`, imported when a share is generated, so that reading the registry
never loads torch)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from diffii_core.methods.spec import MethodSpec, ShareRequest

if TYPE_CHECKING:
    from diffii_core.output import GeneratedImage


def generate(req: ShareRequest) -> Iterator[GeneratedImage]:
    from diffii_core.methods.circle import generate_diff_ii

    return generate_diff_ii(req)


SPEC = MethodSpec(
    name="diff-ii",
    summary="interpolate two inversions of a class on their great circle; suffixed prompt early",
    generate=generate,
    inversion=True,
    sampler="ddim",
)
