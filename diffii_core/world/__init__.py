"""The diffii world: a procedural fine-grained bird domain (`domain`), datasets of it (`datasets`), the
small Stable-Diffusion-shaped `world` model pretrained on it (`model`, `train`), the attribute
`oracle` that judges images, and the quality gates (`check`)."""

from __future__ import annotations

from pathlib import Path

from diffii_core.errors import ModelError

# Trained weights beside the code that uses them, in a folder of their own: the world model
# (`weights/model/`, a diffusers directory that `model_registry.WORLD_MODEL_DIR` names for the
# loader), the oracle (`oracle.py` reads `weights/oracle/`) and the backbone (`backbone.py` writes
# `weights/backbone/`).
WEIGHTS_DIR = Path(__file__).parent / "weights"
BACKBONE_DIR = WEIGHTS_DIR / "backbone"
ORACLE_DIR = WEIGHTS_DIR / "oracle"


def shipped_backbone() -> Path:
    """The world's pretrained classifier backbone (a transformers model directory)."""
    if not (BACKBONE_DIR / "config.json").exists():
        raise ModelError(
            f"the world backbone is not in {BACKBONE_DIR}: `diffii world train --stage backbone`"
        )
    return BACKBONE_DIR
