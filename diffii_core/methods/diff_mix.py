"""diff-mix: a random image of the class, the concept of a target class drawn over all classes, soft label."""

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
    name="diff-mix",
    summary="a random image of the class, the concept of a target class drawn over all classes, soft label",
    generate=generate,
    references=True,
    mix=True,
    label="soft",
    strengths=(0.5,),
)
