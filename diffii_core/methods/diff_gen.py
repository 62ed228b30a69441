"""diff-gen: text to image from the class's concept, hard label."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="diff-gen",
    summary="text to image from the class's concept, hard label",
    generate=img2img,
    strengths=(1.0,),
)
