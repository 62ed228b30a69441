"""diff-gen: text to image from the class's concept, hard label."""

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
    name="diff-gen",
    summary="text to image from the class's concept, hard label",
    generate=generate,
    strengths=(1.0,),
)
