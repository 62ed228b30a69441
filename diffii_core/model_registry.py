"""The model table (name -> "tiny" | diffusers directory | hub id), built by one rule.

The built-in models are always there; the operator's `DIFFII_MODELS` is merged over them (adding
models, or pointing a built-in name elsewhere). The services' settings and `diffii augment` both call
:func:`model_table`, so the same value gives the same table, with the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffii_core.errors import ModelError

# "tiny" is built in code (random weights); "world" is the pretrained world model in diffii_core/world.
BUILTIN_MODELS: dict[str, str] = {"tiny": "tiny", "world": "world"}
# The world model's diffusers folder ships in the package beside the world's other weights. It is
# named here, below the world package (which builds on the loader), so the loader need not import it.
WORLD_MODEL_DIR = Path(__file__).parent / "world" / "weights" / "model"


def shipped_world_model() -> Path:
    """The shipped world model's diffusers directory."""
    if not (WORLD_MODEL_DIR / "model_index.json").exists():
        raise ModelError(
            f"the world model is not in {WORLD_MODEL_DIR}: train and export it (`diffii world train`)"
        )
    return WORLD_MODEL_DIR


def model_table(value: str | Mapping[str, Any] | None, *, source: str = "DIFFII_MODELS") -> dict[str, str]:
    """The built-in models with `value` (DIFFII_MODELS: JSON text or a mapping) merged over them."""
    return {**BUILTIN_MODELS, **parse_registry(value, source=source)}


def parse_registry(value: str | Mapping[str, Any] | None, *, source: str = "DIFFII_MODELS") -> dict[str, str]:
    """The registry as a dict; ValueError naming ``source`` and the bad entry for anything else."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f'{source} must be a JSON object of model name -> location, e.g. {{"tiny": "tiny"}}')
    registry: dict[str, str] = {}
    for name, where in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{source}: model names must be non-empty strings, got {name!r}")
        if not isinstance(where, str) or not where.strip():
            raise ValueError(
                f"{source}: model {name!r} must map to 'tiny', a diffusers directory or a hub id, "
                f"got {where!r}"
            )
        registry[name] = where
    return registry
