"""da-fusion: img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="da-fusion",
    summary="img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list",
    generate=img2img,
    concepts="tokens",
    tokens_per_class=4,
    references=True,
    strengths=(0.25, 0.5, 0.75, 1.0),
)
