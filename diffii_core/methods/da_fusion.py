"""da-fusion: img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list."""

from diffii_core.methods.spec import MethodSpec, img2img

SPEC = MethodSpec(
    name="da-fusion",
    summary="img2img with textual-inversion tokens only (no LoRA), strength drawn per image from a list",
    generate=img2img,
    concepts="tokens",
    tokens_per_class=4,
    references=True,
    strengths=(0.25, 0.5, 0.75, 1.0),
)
