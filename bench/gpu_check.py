"""The engine on a Stable-Diffusion-1.5-sized pipeline with random weights, built from config (nothing is
downloaded): concept learning, DDIM inversion and generation for a few steps, with the peak accelerator
memory and the images per second of each. Run it wherever a GPU is at hand:

    scripts/gpu_check.sh                      # SD 1.5 sizes, 512 px, the device's half precision
    scripts/gpu_check.sh --size tiny          # the same path at the tiny model's sizes (CPU smoke run)

The weights are noise, so the images are too; what it checks is speed, memory and that fp16/bf16
training and sampling run (finite losses) on the real shapes."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from diffii_core.dataset import load_dataset
from diffii_core.inversion.invert import invert_class
from diffii_core.learning.concepts import concepts_applied
from diffii_core.learning.training import learn_concepts
from diffii_core.models import load_model
from diffii_core.models.tiny import SCHEDULER_CONFIG, TEXT_CONFIG, UNET_CONFIG, VAE_CONFIG, build_tokenizer
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline.generate import generate_share
from diffii_core.sample_data import write_sample_dataset

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}  # fmt: skip
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "scaling_factor": 0.18215,
}  # fmt: skip
SD15_TEXT = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "max_position_embeddings": 77, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 1,
    "pad_token_id": 1,
}  # fmt: skip
SIZES = {
    "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT, 49408),
    "tiny": (UNET_CONFIG, VAE_CONFIG, TEXT_CONFIG, None),
}


def build(size: str, folder: Path) -> None:
    """A diffusers directory of random weights, so the check loads it the way a real model loads."""
    unet_config, vae_config, text_config, vocab = SIZES[size]
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    UNet2DConditionModel(**unet_config).save_pretrained(folder / "unet")
    AutoencoderKL(**vae_config).save_pretrained(folder / "vae")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab or len(tokenizer), **text_config))
    text.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    DDIMScheduler.from_config(SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")


class Meter:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Meter:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.began = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = float("nan")  # CPU: no allocator peak to read
        self.seconds = time.perf_counter() - self.began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="sd15")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--steps", type=int, default=10, help="concept-learning steps")
    parser.add_argument("--images", type=int, default=8, help="images to generate")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--sampling-steps", type=int, default=25, help="inversion and denoising steps")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        build(args.size, folder)
        model = load_model("check", {"check": str(folder)}, device=args.device)
        dataset = load_dataset(write_sample_dataset(Path(tmp) / "data"))
        params = JobParams(
            model="check", preset="quick", seed=0, inference_steps=args.sampling_steps,
            inversion_steps=args.sampling_steps,
            concepts=ConceptParams(steps=args.steps, mixed_precision=args.mixed_precision),
        )  # fmt: skip
        print(
            f"size {args.size}: {model.resolution} px, device {model.device}, UNet {model.dtype}, "
            f"torch {torch.__version__}"
        )
        with Meter(model.device) as m:
            concepts = learn_concepts(model, dataset, params)
        losses = concepts.losses
        finite = all(v == v and abs(v) != float("inf") for v in losses)
        print(
            f"concept learning: {args.steps} steps x batch {params.concepts.batch_size} x "
            f"{params.concepts.gradient_accumulation}, autocast {concepts.recipe['mixed_precision']}: "
            f"{args.steps / m.seconds:.3f} steps/s, peak memory {m.peak_gib:.2f} GiB, "
            f"losses finite: {finite}"
        )
        cls = max(dataset.classes, key=lambda c: len(c.images))
        with concepts_applied(model, concepts):
            with Meter(model.device) as m:
                pool = invert_class(
                    model,
                    concepts,
                    [i.open() for i in cls.images],
                    cls.name,
                    params,
                    batch_size=args.batch_size,
                )
            rate = pool.shape[0] / m.seconds
            print(
                f"inversion: {pool.shape[0]} images x {args.sampling_steps} steps: {rate:.3f} images/s, "
                f"peak memory {m.peak_gib:.2f} GiB"
            )
            with Meter(model.device) as m:
                made = list(
                    generate_share(
                        model, concepts, pool, class_name=cls.name, label_index=cls.index,
                        class_names=dataset.class_names(), source_names=[i.path for i in cls.images],
                        params=params, start=0, stop=args.images, batch_size=args.batch_size,
                    )
                )  # fmt: skip
            print(
                f"generation: {len(made)} images x {args.sampling_steps} steps, CFG 7.5, "
                f"batch {args.batch_size}: "
                f"{len(made) / m.seconds:.3f} images/s, peak memory {m.peak_gib:.2f} GiB"
            )


if __name__ == "__main__":
    main()
