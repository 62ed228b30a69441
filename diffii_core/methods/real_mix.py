"""real-mix: as diff-mix with the readable target class name on the base model, soft label."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="real-mix",
    summary="as diff-mix with the readable target class name on the base model, soft label",
    generate=img2img,
    concepts="none",
    prompt="name",
    references=True,
    mix=True,
    label="soft",
    strengths=(0.5,),
)
