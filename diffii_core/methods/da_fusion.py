"""da-fusion: img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list."""

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
    name="da-fusion",
    summary="img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list",
    generate=generate,
    concepts="tokens",
    tokens_per_class=4,
    references=True,
    strengths=(0.25, 0.5, 0.75, 1.0),
)
