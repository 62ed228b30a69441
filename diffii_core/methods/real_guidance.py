"""real-guidance: a random image of the class and its readable name on the base model, hard label."""

from diffii_core.methods.img2img import img2img
from diffii_core.methods.spec import MethodSpec

SPEC = MethodSpec(
    name="real-guidance",
    summary="a random image of the class and its readable name on the base model, hard label",
    generate=img2img,
    concepts="none",
    prompt="name",
    references=True,
    strengths=(0.5,),
)
