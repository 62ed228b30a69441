"""Pixels in and out: resizing, VAE encoding and decoding, PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from diffii_core.models import LoadedModel


def to_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size` and centre-crop, keeping the aspect of the subject."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def fit_square(image: Image.Image, size: int, geometry: str = "squash") -> Image.Image:
    """The model's square input: "squash" resizes to size x size as the published code does (nothing of
    a wide subject is cut off); "crop" keeps the aspect and cuts the longer side."""
    if geometry == "crop":
        return to_square(image, size)
    return image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """[3, H, W] in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def run_padded(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """Call a network on a batch of at least two rows (each input is batched along its first axis). CPU
    kernels pick another algorithm for a batch of one, whose last bits differ; padding keeps an image's
    bytes independent of the batch size."""
    if inputs[0].shape[0] != 1:
        return fn(*inputs)
    return fn(*(torch.cat([x, x]) for x in inputs))[:1]


@torch.no_grad()
def encode_images(model: LoadedModel, pixels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """VAE posterior mean times the scaling factor, fp32 on the CPU."""
    out = []
    for start in range(0, pixels.shape[0], batch_size):
        chunk = pixels[start : start + batch_size].to(model.device, model.dtype)
        mean = run_padded(lambda x: model.vae.encode(x).latent_dist.mean, chunk)
        out.append((mean * model.scaling_factor).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    """uint8 images [N, H, W, 3]."""
    x = (latents / model.scaling_factor).to(model.device, model.dtype)
    pixels = run_padded(lambda z: model.vae.decode(z).sample, x)
    pixels = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def png_bytes(array: np.ndarray) -> bytes:
    """PNG with no metadata or timestamps, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
