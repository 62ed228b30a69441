"""diffii_core: the Diff-II augmentation engine as a library (no web, queue or database imports).

    from diffii_core import JobParams, augment

    augment("my-dataset/", "synthetic.zip", JobParams(model="tiny", expansion=2, seed=7))

The names below are imported on first use, so `import diffii_core` (which the API does, and which must
not load torch) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "augment": "diffii_core.pipeline.augment",
    "AugmentSummary": "diffii_core.pipeline.augment",
    "JobParams": "diffii_core.params",
    "load_dataset": "diffii_core.dataset",
    "DatasetLimits": "diffii_core.dataset",
    "load_model": "diffii_core.models",
    "LoadedModel": "diffii_core.models",
    "learn_concepts": "diffii_core.learning.training",
    "Concepts": "diffii_core.learning.concepts",
    "concepts_applied": "diffii_core.learning.concepts",
    "invert_class": "diffii_core.inversion.invert",
    "generate_share": "diffii_core.pipeline.generate",
    "GeneratedImage": "diffii_core.output.generated",
    "ArchiveWriter": "diffii_core.output.archive",
    "METHODS": "diffii_core.methods",
    "evaluate": "diffii_core.evaluate.run",
    "write_sample_dataset": "diffii_core.sample_data",
    "DiffiiError": "diffii_core.errors",
    "DatasetError": "diffii_core.errors",
    "ModelError": "diffii_core.errors",
    "ArtifactError": "diffii_core.errors",
    "Cancelled": "diffii_core.errors",
}
__all__ = [  # noqa: RUF022 - in the order of _EXPORTS
    "__version__",
    "augment",
    "AugmentSummary",
    "JobParams",
    "load_dataset",
    "DatasetLimits",
    "load_model",
    "LoadedModel",
    "learn_concepts",
    "Concepts",
    "concepts_applied",
    "invert_class",
    "generate_share",
    "GeneratedImage",
    "ArchiveWriter",
    "METHODS",
    "evaluate",
    "write_sample_dataset",
    "DiffiiError",
    "DatasetError",
    "ModelError",
    "ArtifactError",
    "Cancelled",
]

if TYPE_CHECKING:
    from diffii_core.dataset import DatasetLimits, load_dataset
    from diffii_core.errors import ArtifactError, Cancelled, DatasetError, DiffiiError, ModelError
    from diffii_core.evaluate.run import evaluate
    from diffii_core.inversion.invert import invert_class
    from diffii_core.learning.concepts import Concepts, concepts_applied
    from diffii_core.learning.training import learn_concepts
    from diffii_core.methods import METHODS
    from diffii_core.models import LoadedModel, load_model
    from diffii_core.output.archive import ArchiveWriter
    from diffii_core.output.generated import GeneratedImage
    from diffii_core.params import JobParams
    from diffii_core.pipeline.augment import AugmentSummary, augment
    from diffii_core.pipeline.generate import generate_share
    from diffii_core.sample_data import write_sample_dataset


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffii_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
