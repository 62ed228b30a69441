"""The operator's model list (name -> "tiny" | diffusers directory | hub id), parsed in one place.

`DIFFII_MODELS` is read by the services' settings and by `diffii augment`; both go through
:func:`parse_registry`, so a list one of them accepts the other accepts too, with the same errors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# "tiny" is built in code (random weights); "world" is the pretrained world model in diffii_core/world.
DEFAULT_REGISTRY: dict[str, str] = {"tiny": "tiny", "world": "world"}


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
