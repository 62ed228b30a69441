"""real-mix: as diff-mix with the readable target class name on the base model, soft label."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from diffii_core.methods.spec import MethodSpec, ShareRequest

if TYPE_CHECKING:
    from diffii_core.output import GeneratedImage


def generate(req: ShareRequest) -> Iterator[GeneratedImage]:
    from diffii_core.methods.img2img import generate_img2img

    return generate_img2img(SPEC, req)


SPEC = MethodSpec(
    name="real-mix",
    summary="as diff-mix with the readable target class name on the base model, soft label",
    generate=generate,
    concepts="none",
    prompt="name",
    references=True,
    mix=True,
    label="soft",
    strengths=(0.5,),
)
