"""real-filter: real-guidance images kept where a classifier trained on the real set agrees with the
label (the implementation is in `filtered.py`, imported when a share is generated)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from diffii_core.methods.spec import MethodSpec, ShareRequest

if TYPE_CHECKING:
    from diffii_core.output import GeneratedImage


def generate(req: ShareRequest) -> Iterator[GeneratedImage]:
    from diffii_core.methods.filtered import generate_filtered

    return generate_filtered(SPEC, req)


SPEC = MethodSpec(
    name="real-filter",
    summary="real-guidance images kept where a classifier trained on the real set agrees with the label",
    generate=generate,
    concepts="none",
    prompt="name",
    references=True,
    classifier=True,
    strengths=(0.5,),
)
