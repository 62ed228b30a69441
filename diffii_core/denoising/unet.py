"""One UNet prediction, with the batch-of-one padding that keeps results batch-independent."""

from __future__ import annotations

import torch

from diffii_core.images import run_padded
from diffii_core.models import LoadedModel


@torch.no_grad()
def predict_noise(model: LoadedModel, x: torch.Tensor, t: int, hidden: torch.Tensor) -> torch.Tensor:
    """The UNet's output (noise, or velocity for a v-prediction model; Schedule.split reads either) for
    latents x [N, c, h, w] at timestep t with text states hidden [N, 77, d]; fp32 on the CPU."""

    def unet(x: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        step = torch.full((x.shape[0],), t, device=model.device, dtype=torch.long)
        return model.unet(x.to(model.device, model.dtype), step, hidden.to(model.device, model.dtype)).sample

    return run_padded(unet, x, hidden).float().cpu()
