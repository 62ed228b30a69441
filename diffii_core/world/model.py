"""The `world` model's shape: a Stable-Diffusion-shaped pipeline small enough to pretrain on 2 CPU cores.

32 px images, an x2 AutoencoderKL (16x16x4 latents), a UNet2DConditionModel with cross-attention at
8x8 and 4x4, a 3-layer CLIP text model with a word-level tokenizer built in code (every word of the
world's captions and of the default suffix lists is one token). The scheduler is SD 1.x's, with
epsilon prediction; pretraining uses offset noise so the prompt, not the starting noise, decides an
image's overall colour (its background).

`save_pipeline` writes a diffusers model directory (fp16 safetensors) that `diffii_core.models`
loads through the same code path as a user's Stable Diffusion directory.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from diffii_core.denoising.suffixes import DEFAULT_SUFFIXES
from diffii_core.models.tiny import SCHEDULER_CONFIG as TINY_SCHEDULER_CONFIG
from diffii_core.world import domain

BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"
MAX_TOKENS = 32

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [32, 64],
    # Two layers a block: one lost a dark crest on a dark forest (oracle 0.75 on reconstructions).
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": domain.RESOLUTION,
    "scaling_factor": 1.0,  # set from the trained encoder's latent spread
}
# Cross-attention at 8x8 and 4x4 only: attention over the 16x16 grid tripled the cost of a step on
# CPU for little gain at 32 px. 4.2M parameters, 0.8 GFLOP per image for a training step.
UNET_CONFIG: dict[str, Any] = {
    "sample_size": domain.RESOLUTION // 2,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": 128,
    "attention_head_dim": [1, 2, 4],  # diffusers reads this as the number of heads: 32-wide heads
    "norm_num_groups": 32,
}
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 128,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
# Stable Diffusion 1.x's schedule (as the tiny model's): the engine's timestep and split-ratio rules
# apply unchanged.
SCHEDULER_CONFIG: dict[str, Any] = {"_class_name": "DDIMScheduler", **TINY_SCHEDULER_CONFIG}

# "-" joined the attributes of the first species names; it stays so that the shipped tokenizer and a
# freshly built one keep the same vocabulary.
_EXTRA_WORDS = [
    "a", "an", "the", "of", "photo", "picture", "image", "in", "on", "with", "and", "no", "bird", "-",
]  # fmt: skip


def vocabulary() -> list[str]:
    """Every word the world's captions and default suffixes use (a species' readable name is its
    description's words)."""
    texts = [domain.caption(s, c) for s in domain.all_species() for c in range(len(domain.CONTEXTS))]
    texts += [suffix for suffixes in DEFAULT_SUFFIXES.values() for suffix in suffixes]
    words: set[str] = set(_EXTRA_WORDS)
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {BOS: 0, EOS: 1, UNK: 2} | {w: i + 3 for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        model_max_length=MAX_TOKENS,
    )


def build_fresh(
    seed: int,
) -> tuple[PreTrainedTokenizerFast, CLIPTextModel, UNet2DConditionModel, AutoencoderKL]:
    """Untrained parts with weights fixed by `seed` (the global RNG is left as it was)."""
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    return tokenizer, text_encoder, unet, vae


def save_pipeline(
    directory: Path,
    tokenizer: PreTrainedTokenizerFast,
    text_encoder: CLIPTextModel,
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
) -> None:
    """A diffusers Stable Diffusion directory, weights in fp16 safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory / "tokenizer")
    # diffusers warns on every cast of a model to fp16; here the cast is for storage only.
    quiet = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        for part, module in (("text_encoder", text_encoder), ("unet", unet), ("vae", vae)):
            copy.deepcopy(module).to(torch.float16).save_pretrained(directory / part, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(quiet)
    (directory / "scheduler").mkdir(exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (directory / "model_index.json").write_text(json.dumps(index, indent=2))
