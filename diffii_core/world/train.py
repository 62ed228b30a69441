"""Pretraining the `world` model, in resumable legs: the VAE, then the text encoder and UNet together.

Every random draw of a step comes from a generator seeded from (seed, stage, step), and the data are a
fixed, seeded render of pretraining-species images, so a leg resumed from a checkpoint continues
exactly as an uninterrupted run would (on the same machine and kernels). Checkpoints hold fp32 weights,
the EMA weights and the optimiser state; `export` writes the EMA weights as the shipped fp16 diffusers
directory with a manifest of the recipe, steps, seed and file hashes.

    diffii world train --work-dir world-train --stage vae --steps 3000
    diffii world train --work-dir world-train --stage unet --steps 20000 --max-minutes 120
    diffii world train --work-dir world-train --stage export --out diffii_core/world/weights/model
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from diffii_core.atomic import atomic_write
from diffii_core.seeding import generator
from diffii_core.world import domain
from diffii_core.world.fit import TrainingProgress
from diffii_core.world.model import SCHEDULER_CONFIG, build_fresh, build_tokenizer, save_pipeline


@dataclass
class Recipe:
    """Everything that decides the weights, recorded in checkpoints and in the manifest."""

    seed: int = 0
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_edge_weight: float = 1.0
    vae_schedule_steps: int = 6000  # the cosine learning-rate period: fixed, so legs resume exactly
    unet_batch: int = 64
    unet_lr: float = 3e-4
    unet_warmup: int = 500
    cfg_dropout: float = 0.1
    offset_noise: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    data_images: int = 60_000
    vae_stats_images: int = 2048
    checkpoint_every: int = 500
    extra: dict[str, Any] = field(default_factory=dict)


def _pixels(images: list[Any]) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def render_batch(seed: int, stage: str, step: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """`count` fresh images of pretraining species, fixed by (seed, stage, step)."""
    species = domain.pretraining_species()
    rng = np.random.default_rng([seed, hash_stage(stage), step])
    images, captions = [], []
    for _ in range(count):
        s = species[int(rng.integers(len(species)))]
        image, context = domain.sample_image(s, rng)
        images.append(image)
        captions.append(domain.caption(s, context))
    return _pixels(images), captions


def hash_stage(stage: str) -> int:
    return int.from_bytes(hashlib.sha256(stage.encode()).digest()[:4], "big")


# -- checkpoints -----------------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:

    with atomic_write(path, durable=True) as fp:
        torch.save(state, fp)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


# -- VAE -------------------------------------------------------------------------------------------


def train_vae(
    work_dir: Path,
    recipe: Recipe,
    steps: int,
    *,
    max_seconds: float | None = None,
    progress: TrainingProgress | None = None,
) -> int:
    """Train the autoencoder to `steps` (resuming); returns the step reached."""
    ckpt_path = work_dir / "vae.pt"
    _, _, _, vae = build_fresh(recipe.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    step = 0
    state = _load_checkpoint(ckpt_path)
    if state is not None:
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    vae.train()
    start = time.monotonic()
    while step < steps:
        pixels, _ = render_batch(recipe.seed, "vae", step, recipe.vae_batch)
        g = generator(recipe.seed, "vae-noise", step)
        progress_share = min(1.0, step / recipe.vae_schedule_steps)
        for group in opt.param_groups:  # cosine from lr to lr/10 over the schedule
            group["lr"] = recipe.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_share)))
        posterior = vae.encode(pixels).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        recon = vae.decode(z).sample
        rec_loss = F.mse_loss(recon, pixels) + 0.5 * F.l1_loss(recon, pixels)
        rec_loss = rec_loss + recipe.vae_edge_weight * edge_loss(recon, pixels)
        loss = rec_loss + recipe.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), recipe.grad_clip)
        opt.step()
        step += 1
        if progress:
            progress("vae", step, steps, {"loss": rec_loss.item()})
        timed_out = max_seconds is not None and time.monotonic() - start > max_seconds
        if step % recipe.checkpoint_every == 0 or step == steps or timed_out:
            _save_checkpoint(
                ckpt_path,
                {"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step, "recipe": asdict(recipe)},
            )
        if timed_out:
            break
    return step


def edge_loss(recon: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """L1 between the images' horizontal and vertical differences. Field marks (a crest's spikes, a
    forked tail) are a few pixels of dark on dark: plain MSE trades them away for smooth backgrounds."""

    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]

    (ry, rx), (py, px) = grads(recon), grads(pixels)
    return F.l1_loss(ry, py) + F.l1_loss(rx, px)


def centred_vae(work_dir: Path, recipe: Recipe) -> AutoencoderKL:
    """The trained VAE with its latents centred per channel and scaled to unit spread.

    The shift is folded into the encoder's and decoder's 1x1 convolutions, so the directory stays a
    plain AutoencoderKL that any SD loader reads, and `scaling_factor` is set from the measured spread."""
    state = _load_checkpoint(work_dir / "vae.pt")
    if state is None:
        raise FileNotFoundError(f"no VAE checkpoint in {work_dir}: train the vae stage first")
    _, _, _, vae = build_fresh(recipe.seed)
    vae.load_state_dict(state["vae"])
    vae.eval()
    pixels, _ = render_batch(recipe.seed, "vae-stats", 0, recipe.vae_stats_images)
    with torch.no_grad():
        means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pixels.split(256)])
        shift = means.mean(dim=(0, 2, 3))
        vae.quant_conv.bias[: shift.numel()] -= shift
        weight = vae.post_quant_conv.weight[:, :, 0, 0]
        vae.post_quant_conv.bias += weight @ shift
        spread = (means - shift[None, :, None, None]).std()
    vae.register_to_config(scaling_factor=float(1.0 / spread))
    return vae


# -- text encoder + UNet ---------------------------------------------------------------------------


def _latent_cache(
    work_dir: Path, recipe: Recipe, vae: AutoencoderKL, tokenizer: Any
) -> dict[str, torch.Tensor]:
    """Pretraining data: posterior means and spreads of `data_images` rendered images, with token ids."""
    key = hashlib.sha256(
        json.dumps([recipe.seed, recipe.data_images]).encode()
        + b"".join(p.detach().numpy().tobytes() for p in vae.parameters())
    ).hexdigest()[:16]
    path = work_dir / f"latents-{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu")
    means, stds, ids = [], [], []
    chunk = 500
    with torch.no_grad():
        for i in range(0, recipe.data_images, chunk):
            pixels, captions = render_batch(
                recipe.seed, "data", i // chunk, min(chunk, recipe.data_images - i)
            )
            post = vae.encode(pixels).latent_dist
            means.append(post.mean.half())
            stds.append(post.std.half())
            ids.append(
                tokenizer(
                    captions,
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.short()
            )
    cache = {"mean": torch.cat(means), "std": torch.cat(stds), "ids": torch.cat(ids)}
    torch.save(cache, path)
    return cache


@dataclass
class UNetState:
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    ema_text: CLIPTextModel
    ema_unet: UNet2DConditionModel
    opt: torch.optim.Optimizer
    step: int


def _unet_state(work_dir: Path, recipe: Recipe) -> UNetState:
    _, text_encoder, unet, _ = build_fresh(recipe.seed)
    params = list(text_encoder.parameters()) + list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=recipe.unet_lr, weight_decay=1e-2, foreach=True)
    ema_text, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    step = 0
    state = _load_checkpoint(work_dir / "unet.pt")
    if state is not None:
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        ema_text.load_state_dict(state["ema_text"])
        ema_unet.load_state_dict(state["ema_unet"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    for m in (ema_text, ema_unet):
        m.requires_grad_(False).eval()
    return UNetState(text_encoder, unet, ema_text, ema_unet, opt, step)


def train_unet(
    work_dir: Path,
    recipe: Recipe,
    steps: int,
    *,
    max_seconds: float | None = None,
    progress: TrainingProgress | None = None,
) -> int:
    """Train the text encoder and UNet jointly to `steps` (resuming); returns the step reached."""
    tokenizer = build_tokenizer()
    vae = centred_vae(work_dir, recipe)
    cache = _latent_cache(work_dir, recipe, vae, tokenizer)
    scale = float(vae.config.scaling_factor)
    empty = tokenizer(
        [""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids[0]
    noise_scheduler = DDPMScheduler.from_config(
        {k: v for k, v in SCHEDULER_CONFIG.items() if k != "_class_name"}
    )
    st = _unet_state(work_dir, recipe)
    st.text_encoder.train()
    st.unet.train()
    trainable = list(st.text_encoder.parameters()) + list(st.unet.parameters())
    ema_pairs = list(
        zip(list(st.ema_text.parameters()) + list(st.ema_unet.parameters()), trainable, strict=True)
    )
    n = cache["mean"].shape[0]
    start = time.monotonic()
    while st.step < steps:
        g = generator(recipe.seed, "unet", st.step)
        idx = torch.randint(n, (recipe.unet_batch,), generator=g)
        mean, std = cache["mean"][idx].float(), cache["std"][idx].float()
        latents = (mean + std * torch.randn(mean.shape, generator=g)) * scale
        ids = cache["ids"][idx].long()
        drop = torch.rand(recipe.unet_batch, generator=g) < recipe.cfg_dropout
        ids[drop] = empty
        noise = torch.randn(latents.shape, generator=g)
        # Offset noise: a per-image, per-channel constant lets the model move an image's mean colour.
        noise = noise + recipe.offset_noise * torch.randn((*latents.shape[:2], 1, 1), generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (recipe.unet_batch,), generator=g)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        lr = recipe.unet_lr * min(1.0, (st.step + 1) / recipe.unet_warmup)
        for group in st.opt.param_groups:
            group["lr"] = lr
        hidden = st.text_encoder(ids)[0]
        pred = st.unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred, noise)
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, recipe.grad_clip)
        st.opt.step()
        st.step += 1
        decay = min(recipe.ema_decay, (1 + st.step) / (10 + st.step))
        with torch.no_grad():
            for ema, p in ema_pairs:
                ema.lerp_(p, 1 - decay)
        if progress:
            progress("unet", st.step, steps, {"loss": loss.item(), "lr": lr})
        timed_out = max_seconds is not None and time.monotonic() - start > max_seconds
        if st.step % recipe.checkpoint_every == 0 or st.step == steps or timed_out:
            _save_checkpoint(
                work_dir / "unet.pt",
                {
                    "text_encoder": st.text_encoder.state_dict(),
                    "unet": st.unet.state_dict(),
                    "ema_text": st.ema_text.state_dict(),
                    "ema_unet": st.ema_unet.state_dict(),
                    "opt": st.opt.state_dict(),
                    "step": st.step,
                    "recipe": asdict(recipe),
                },
            )
        if timed_out:
            break
    return st.step


# -- export ----------------------------------------------------------------------------------------


def export(work_dir: Path, recipe: Recipe, out: Path) -> dict[str, Any]:
    """Write the EMA weights as a diffusers directory with `manifest.json`; returns the manifest."""
    vae = centred_vae(work_dir, recipe)
    st = _unet_state(work_dir, recipe)
    vae_state = _load_checkpoint(work_dir / "vae.pt") or {}
    save_pipeline(out, build_tokenizer(), st.ema_text, st.ema_unet, vae)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "model": "world",
        "recipe": asdict(recipe),
        "vae_steps": vae_state.get("step", 0),
        "unet_steps": st.step,
        "seed": recipe.seed,
        "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    }
    with atomic_write(out / "manifest.json") as fp:
        fp.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def verify_manifest(directory: Path) -> list[str]:
    """Files whose hash differs from the manifest's (empty when the directory is intact)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    bad = []
    for rel, digest in manifest["files"].items():
        path = directory / rel
        if not path.exists() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(rel)
    return bad
