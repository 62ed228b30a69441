"""What a method is to the rest of diffii: what it needs before it can run, how it prompts, samples and
labels, and the function that makes a range of a class's images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from diffii_core.learning.concepts import Concepts
    from diffii_core.methods.real_filter import FeatureClassifier
    from diffii_core.models import LoadedModel
    from diffii_core.output.generated import GeneratedImage
    from diffii_core.params import JobParams

ConceptKind = Literal["none", "lora+tokens", "tokens"]
# The denoising samplers a method or a job may name (implemented in `diffii_core.denoising.sampling`).
SAMPLERS: tuple[str, ...] = ("ddim", "dpm-solver++")


@dataclass
class ShareRequest:
    """Images [start, stop) of one class, with everything the method said it needs."""

    model: LoadedModel
    params: JobParams
    class_name: str
    label_index: int
    class_names: list[str]
    source_names: list[str]
    start: int
    stop: int
    concepts: Concepts | None = None
    pool: torch.Tensor | None = None  # Diff-II's inversion pool of the class
    own_images: int | None = None  # source_names[:own_images] are the class's; the rest are borrowed
    references: Sequence[Image.Image] | None = None  # the class's images, aligned with source_names
    classifier: FeatureClassifier | None = None
    batch_size: int = 8
    should_stop: Callable[[], bool] | None = None


# A method's images for a request: step 5 (Diff-II: steps 4 and 5, from its inversion pool). generate_share
# calls it with the method's own entry, so one function serves a family (`methods.img2img.img2img`).
Generate = Callable[["MethodSpec", ShareRequest], Iterator["GeneratedImage"]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str
    generate: Generate
    concepts: ConceptKind = "lora+tokens"  # "tokens": textual inversion only (DA-Fusion)
    # The method's own published token count (DA-Fusion's 4); None: the model's preset, else one token
    # (Diff-Mix's code, which every method of its family shares).
    tokens_per_class: int | None = None
    inversion: bool = False  # starts from the class's DDIM inversion pool
    references: bool = False  # img2img from the class's real images
    classifier: bool = False  # a classifier trained on the real set filters its images
    prompt: Literal["concept", "name"] = "concept"  # learned tokens, or the readable class name
    sampler: str = "dpm-solver++"
    strengths: tuple[float, ...] = (1.0,)
    label: Literal["hard", "soft"] = "hard"
    mix: bool = False  # the prompt's class is drawn over all classes

    @property
    def needs_concepts(self) -> bool:
        return self.concepts != "none"
