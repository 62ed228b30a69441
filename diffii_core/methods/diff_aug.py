"""diff-aug: a random image of the class and its own concept, hard label."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="diff-aug",
    summary="a random image of the class and its own concept, hard label",
    generate=img2img,
    references=True,
    strengths=(0.5,),
)
