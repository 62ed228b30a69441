"""real-guidance: a random image of the class and its readable name on the base model, hard label."""

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
    name="real-guidance",
    summary="a random image of the class and its readable name on the base model, hard label",
    generate=generate,
    concepts="none",
    prompt="name",
    references=True,
    strengths=(0.5,),
)
