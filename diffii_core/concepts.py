"""Category concept learning: placeholder token rows per class and one LoRA on every UNet attention
projection, trained jointly with the epsilon-MSE loss. Only the placeholder rows ever change."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file

from diffii_core.atomic import atomic_path
from diffii_core.batch_invariance import stabilize
from diffii_core.ddim import Schedule
from diffii_core.errors import ArtifactError, Cancelled
from diffii_core.images import to_tensor
from diffii_core.models import LoadedModel
from diffii_core.params import JobParams
from diffii_core.prompts import concept_prompt, ensure_tokens, placeholder_tokens, tokenize
from diffii_core.seeding import derive_seed, generator

ADAPTER = "diffii"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
FORMAT = 1
CHECKPOINT = "concepts-checkpoint.pt"


@dataclass
class Concepts:
    """What concept learning produced for one job: enough to rebuild its pipeline anywhere."""

    class_names: list[str]
    tokens: dict[str, list[str]]
    embeddings: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]
    lora_rank: int
    metaclass: str
    model: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps([self.class_names, self.tokens, self.lora_rank]).encode())
        for name in sorted(self.embeddings):
            digest.update(self.embeddings[name].numpy().tobytes())
        for name in sorted(self.lora):
            digest.update(name.encode())
            digest.update(self.lora[name].numpy().tobytes())
        return digest.hexdigest()

    def save(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "class_names": self.class_names,
            "tokens": self.tokens,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_rank,
            "lora_target_modules": LORA_TARGETS,
            "metaclass": self.metaclass,
            "model": self.model,
            "steps": self.steps,
            "losses": self.losses,
        }
        paths = [
            directory / "embeddings.safetensors",
            directory / "lora.safetensors",
            directory / "concepts.json",
        ]
        save_file({k: v.contiguous() for k, v in self.embeddings.items()}, str(paths[0]))
        save_file({k: v.contiguous() for k, v in self.lora.items()}, str(paths[1]))
        paths[2].write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        return paths

    @classmethod
    def load(cls, directory: Path) -> Concepts:
        try:
            meta = json.loads((directory / "concepts.json").read_text(encoding="utf-8"))
            embeddings = load_file(str(directory / "embeddings.safetensors"))
            lora = load_file(str(directory / "lora.safetensors"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"learned concepts in {directory} are missing or unreadable: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ArtifactError(
                f"learned concepts in {directory} have format {meta.get('format')}, not {FORMAT}"
            )
        missing = [t for toks in meta["tokens"].values() for t in toks if t not in embeddings]
        if missing:
            raise ArtifactError(f"learned concepts in {directory} lack embeddings for {missing[:3]}")
        return cls(
            class_names=meta["class_names"],
            tokens=meta["tokens"],
            embeddings=embeddings,
            lora=lora,
            lora_rank=int(meta["lora_rank"]),
            metaclass=meta["metaclass"],
            model=meta.get("model", {}),
            steps=int(meta.get("steps", 0)),
            losses=list(meta.get("losses", [])),
        )


def _install_adapter(model: LoadedModel, rank: int, init_seed: int | None = None) -> None:
    """A fresh LoRA adapter of `rank`; its random init is seeded so every process builds the same one."""
    unet = model.unet
    if ADAPTER in getattr(unet, "peft_config", {}):
        unet.delete_adapters(ADAPTER)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=LORA_TARGETS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0 if init_seed is None else init_seed)
        unet.add_adapter(config, adapter_name=ADAPTER)
    unet.set_adapters(ADAPTER)
    stabilize(unet)  # the adapter's own Linear layers are new
    # LoRA weights stay fp32 on fp16 models so small updates are not lost to rounding.
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.data = param.data.float()


def apply_concepts(model: LoadedModel, concepts: Concepts | None) -> None:
    """Install a job's tokens and LoRA on the shared model (None: the base model). Cheap to repeat."""
    unet = model.unet
    if concepts is None:
        if getattr(unet, "peft_config", None):
            unet.disable_adapters()
        model.applied = None
        return
    key = concepts.fingerprint
    if model.applied == key:
        return
    tokens = [t for name in concepts.class_names for t in concepts.tokens[name]]
    ids = ensure_tokens(model, tokens)
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, row in zip(tokens, ids, strict=True):
            weight[row] = concepts.embeddings[token].to(weight.device, weight.dtype)
    _install_adapter(model, concepts.lora_rank)
    result = set_peft_model_state_dict(unet, concepts.lora, adapter_name=ADAPTER)
    if getattr(result, "unexpected_keys", None):
        raise ArtifactError(f"learned LoRA does not fit model {model.name!r}: {result.unexpected_keys[:3]}")
    unet.enable_adapters()
    model.applied = key


def _train_tensors(images: list[Image.Image], resolution: int) -> list[torch.Tensor]:
    """Shorter side to the resolution; the random crop and flip happen per step."""
    out = []
    for image in images:
        image = image.convert("RGB")
        w, h = image.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        out.append(to_tensor(image.resize(size, Image.Resampling.BICUBIC)))
    return out


def _augment(pixels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    _, h, w = pixels.shape
    top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    crop = pixels[:, top : top + size, left : left + size]
    return crop.flip(-1) if bool(torch.rand(1, generator=gen) < 0.5) else crop


@dataclass
class _Trainer:
    model: LoadedModel
    params: JobParams
    class_names: list[str]
    samples: list[tuple[torch.Tensor, int]]  # (pixels, class index)
    resolution: int
    token_ids: list[int] = field(default_factory=list)

    def prompts(self, classes: list[int]) -> torch.Tensor:
        tpc = self.params.concepts.tokens_per_class
        texts = [concept_prompt(placeholder_tokens(c, tpc), self.params.metaclass) for c in classes]
        return tokenize(self.model, texts)

    def loss(self, pixels: torch.Tensor, classes: list[int], gen: torch.Generator, schedule: Schedule):
        model = self.model
        with torch.no_grad():
            dist = model.vae.encode(pixels.to(model.device, model.dtype)).latent_dist
            latents = dist.sample(generator=gen).float() * model.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, schedule.num_train_timesteps, (latents.shape[0],), generator=gen)
        alpha = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents.cpu() + (1 - alpha).sqrt() * noise
        hidden = model.text_encoder(self.prompts(classes))[0].to(model.dtype)
        pred = model.unet(noisy.to(model.device, model.dtype), t.to(model.device), hidden).sample
        return F.mse_loss(pred.float(), noise.to(model.device))


def learn_concepts(
    model: LoadedModel,
    dataset: Any,
    params: JobParams,
    *,
    checkpoint_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Concepts:
    """Train placeholder rows and a shared LoRA on every image of `dataset` (a diffii_core Dataset)."""
    cfg = params.concepts
    resolution = params.resolution or model.resolution
    class_names = [c.name for c in dataset.classes]
    samples = [
        (pixels, c.index)
        for c in dataset.classes
        for pixels in _train_tensors([item.open() for item in c.images], resolution)
    ]
    trainer = _Trainer(model, params, class_names, samples, resolution)
    tokens = {name: placeholder_tokens(i, cfg.tokens_per_class) for i, name in enumerate(class_names)}
    all_tokens = [t for name in class_names for t in tokens[name]]
    ids = ensure_tokens(model, all_tokens)
    embedding = model.text_encoder.get_input_embeddings()
    _init_placeholder_rows(model, ids, params.metaclass)
    _install_adapter(model, cfg.lora_rank, init_seed=derive_seed(params.seed, "lora-init"))
    model.applied = None

    lora_params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    embedding.weight.requires_grad_(True)
    original = embedding.weight.detach().clone()
    keep = torch.ones(original.shape[0], dtype=torch.bool)
    keep[ids] = False
    optimizer = torch.optim.AdamW(
        [*lora_params, embedding.weight], lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2
    )
    gen = generator(params.seed, "concept-learning")
    schedule = Schedule.from_config(model.scheduler_config)
    fingerprint = _run_fingerprint(model, params, dataset)
    step, losses = 0, []
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        step, losses = _resume(ckpt, fingerprint, model, ids, optimizer, gen)

    try:
        while step < cfg.steps:
            if should_stop is not None and should_stop():
                raise Cancelled("concept learning was stopped")
            picks = torch.randint(0, len(samples), (cfg.batch_size,), generator=gen).tolist()
            pixels = torch.stack([_augment(samples[i][0], resolution, gen) for i in picks])
            loss = trainer.loss(pixels, [samples[i][1] for i in picks], gen, schedule)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*lora_params, embedding.weight], 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                # AdamW's decay and momentum touch every row; only the placeholders may move.
                embedding.weight[keep] = original[keep]
            step += 1
            losses.append(float(loss.detach()))
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                _checkpoint(ckpt, fingerprint, step, losses, model, ids, optimizer, gen)
            # After the checkpoint, so a caller that copies it elsewhere copies this step's.
            if progress is not None:
                progress(step, cfg.steps)
    finally:
        embedding.weight.requires_grad_(False)
        for p in lora_params:
            p.requires_grad_(False)

    concepts = Concepts(
        class_names=class_names,
        tokens=tokens,
        embeddings={
            t: embedding.weight[i].detach().float().cpu().clone()
            for t, i in zip(all_tokens, ids, strict=True)
        },
        lora={
            k: v.detach().float().cpu().clone()
            for k, v in get_peft_model_state_dict(model.unet, adapter_name=ADAPTER).items()
        },
        lora_rank=cfg.lora_rank,
        metaclass=params.metaclass,
        model={"name": model.name, "revision": model.revision},
        steps=step,
        losses=[round(v, 6) for v in losses[-1000:]],
    )
    model.applied = concepts.fingerprint
    return concepts


def _init_placeholder_rows(model: LoadedModel, ids: list[int], metaclass: str) -> None:
    """Start every placeholder at the mean embedding of the metaclass words: a neutral, seeded-free start."""
    word_ids = model.tokenizer(metaclass, add_special_tokens=False).input_ids or [0]
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        start = weight[word_ids].mean(0)
        for row in ids:
            weight[row] = start


def _run_fingerprint(model: LoadedModel, params: JobParams, dataset: Any) -> str:
    files = [[c.name, [item.path for item in c.images]] for c in dataset.classes]
    blob = json.dumps([model.revision, params.model_dump(mode="json"), files], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _checkpoint(
    path: Path,
    fingerprint: str,
    step: int,
    losses: list[float],
    model: LoadedModel,
    ids: list[int],
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
) -> None:
    weight = model.text_encoder.get_input_embeddings().weight
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "losses": losses,
        "rows": weight[ids].detach().clone(),
        "lora": {
            k: v.detach().clone()
            for k, v in get_peft_model_state_dict(model.unet, adapter_name=ADAPTER).items()
        },
        "optimizer": optimizer.state_dict(),
        "generator": gen.get_state(),
    }
    with atomic_path(path) as tmp:  # a crash mid-write leaves the previous checkpoint whole
        torch.save(state, tmp)


def _resume(
    path: Path,
    fingerprint: str,
    model: LoadedModel,
    ids: list[int],
    optimizer: torch.optim.Optimizer,
    gen: torch.Generator,
) -> tuple[int, list[float]]:
    state = torch.load(path, weights_only=False)
    if state.get("fingerprint") != fingerprint:
        return 0, []  # a checkpoint of other parameters or data: start over rather than mix runs
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = state["rows"]
    set_peft_model_state_dict(model.unet, state["lora"], adapter_name=ADAPTER)
    optimizer.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    return int(state["step"]), list(state["losses"])


@torch.no_grad()
def evaluation_loss(model: LoadedModel, dataset: Any, params: JobParams, samples: int = 8) -> float:
    """The training loss on fixed images, noise and timesteps: comparable before and after training."""
    resolution = params.resolution or model.resolution
    pool = [
        (pixels, c.index)
        for c in dataset.classes
        for pixels in _train_tensors([item.open() for item in c.images], resolution)
    ]
    trainer = _Trainer(model, params, [c.name for c in dataset.classes], pool, resolution)
    gen = generator(params.seed, "evaluation")
    schedule = Schedule.from_config(model.scheduler_config)
    total = 0.0
    for k in range(samples):
        pixels, cls = pool[k % len(pool)]
        centre = _augment(pixels, resolution, torch.Generator().manual_seed(k))
        total += float(trainer.loss(centre[None], [cls], gen, schedule))
    return total / samples if not math.isnan(total) else float("nan")
