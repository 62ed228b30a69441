"""diff-aug: a random image of the class and its own concept, hard label."""

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
    name="diff-aug",
    summary="a random image of the class and its own concept, hard label",
    generate=generate,
    references=True,
    strengths=(0.5,),
)
