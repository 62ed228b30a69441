"""The built-in `tiny` model: a Stable-Diffusion-shaped pipeline built from config with fixed random
weights. Its images are noise, but every mechanism (tokens, LoRA, inversion, sampling) runs for real on
a CPU in seconds, and it needs no file and no hub."""

from __future__ import annotations

import hashlib
import json

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

TINY_RESOLUTION = 64
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

UNET_CONFIG = {
    "sample_size": TINY_RESOLUTION // 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    # Two heads of 16 and 32 channels: head sizes nearer SD's than 8 heads of 4, and CPU attention
    # kernels run them far faster.
    "attention_head_dim": 2,
    "norm_num_groups": 8,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 32, 32),
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": TINY_RESOLUTION,
    "layers_per_block": 1,
}
TEXT_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}
# Stable Diffusion 1.x's DDIM schedule, so timesteps and the split-ratio rule match the real models.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
WEIGHT_SEED = 20240601


def scheduler_config(prediction_type: str = "epsilon") -> dict:
    """SD 1.x's schedule; the v-prediction tiny also rescales to zero terminal SNR with trailing
    timesteps, as v-prediction models fine-tuned that way ship."""
    config = dict(SCHEDULER_CONFIG)
    if prediction_type == "v_prediction":
        config |= {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
        config |= {"timestep_spacing": "trailing", "steps_offset": 0}
    return config


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every Unicode string (any class name) has a distinct encoding."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {BOS: 0, EOS: 1} | {ch: i + 2 for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, 0), (EOS, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS, model_max_length=77
    )


def build_tiny() -> tuple[PreTrainedTokenizerFast, CLIPTextModel, UNet2DConditionModel, AutoencoderKL]:
    """Same weights in every process: the global RNG is seeded inside a fork, so callers' RNG is untouched."""
    tokenizer = build_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(WEIGHT_SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **TEXT_CONFIG))
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    return tokenizer, text_encoder, unet, vae


def tiny_revision(prediction_type: str = "epsilon") -> str:
    blob = json.dumps([UNET_CONFIG, VAE_CONFIG, TEXT_CONFIG, WEIGHT_SEED], sort_keys=True, default=list)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    # The epsilon tiny keeps its old revision, so stored artefacts stay valid.
    return f"tiny-{digest}" if prediction_type == "epsilon" else f"tiny-v-{digest}"
