"""The diffii world: a procedural fine-grained bird domain (`domain`), datasets of it (`datasets`), the
small Stable-Diffusion-shaped `world` model pretrained on it (`model`, `train`), the attribute
`oracle` that judges images, and the quality gates (`check`)."""

from __future__ import annotations

from pathlib import Path

from diffii_core.errors import ModelError

# Trained weights beside the code that uses them, in a folder of their own: the world model
# (`weights/model/`, a diffusers directory), the oracle (`oracle.py` reads `weights/oracle/`) and the
# backbone (`backbone.py` writes `weights/backbone/`).
WEIGHTS_DIR = Path(__file__).parent / "weights"
MODEL_DIR = WEIGHTS_DIR / "model"
BACKBONE_DIR = WEIGHTS_DIR / "backbone"
ORACLE_DIR = WEIGHTS_DIR / "oracle"


def shipped_model() -> Path:
    """The shipped world model's diffusers directory."""
    if not (MODEL_DIR / "model_index.json").exists():
        raise ModelError(f"the world model is not in {MODEL_DIR}: train and export it (`diffii world train`)")
    return MODEL_DIR


def shipped_backbone() -> Path:
    """The world's pretrained classifier backbone (a transformers model directory)."""
    if not (BACKBONE_DIR / "config.json").exists():
        raise ModelError(
            f"the world backbone is not in {BACKBONE_DIR}: `diffii world train --stage backbone`"
        )
    return BACKBONE_DIR
