"""diff-mix: a random image of the class, the concept of a target class drawn over all classes, soft label."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="diff-mix",
    summary="a random image of the class, the concept of a target class drawn over all classes, soft label",
    generate=img2img,
    references=True,
    mix=True,
    label="soft",
    strengths=(0.5,),
)
