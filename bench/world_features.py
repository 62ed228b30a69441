"""The world backbone as a frozen feature extractor, for the benches that read a draw's images."""

from __future__ import annotations

from collections.abc import Callable

import torch


def backbone_features() -> Callable[[torch.Tensor], torch.Tensor]:
    """pixels [N, 3, 32, 32] in [-1, 1] -> the shipped world backbone's pooled features [N, d]."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from diffii_core.world import shipped_backbone

    hf_logging.set_verbosity_error()
    backbone = AutoModel.from_pretrained(shipped_backbone()).eval()

    def features(pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return backbone(pixel_values=pixels).pooler_output.flatten(1)

    return features
