"""Concept learning as published (Diff-Mix's recipe): placeholder token rows per class and, unless the
method learns tokens only, one LoRA on every UNet attention projection, trained jointly on the model's
own objective (noise, or velocity for v-prediction models).

1. Placeholders start at the metaclass word's embedding; the LoRA at A ~ N(0, 1/r), B = 0.
2. Trainable weights and AdamW stay fp32; the forward runs under autocast (bf16, or fp16 with a gradient
   scaler) on a GPU, so small gradients of an fp16 UNet do not underflow.
3. Each optimiser step accumulates `gradient_accumulation` passes of `batch_size` images (2 x 4: the
   published effective batch of 8 on one GPU), drawn uniformly or class-balanced, decoded per batch
   by a DataLoader: no image is held in memory between steps.
4. The LoRA gradients are clipped to norm 1; after each step every embedding row other than the
   placeholders is restored. Checkpoints make a long run resumable to the same result, so a run may
   also be learned in slices (`slice_over`), each a call that resumes the last one's checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from diffii_core.atomic import atomic_path
from diffii_core.denoising.prompts import concept_prompt, ensure_tokens, placeholder_tokens, tokenize
from diffii_core.errors import Cancelled
from diffii_core.images import to_tensor
from diffii_core.learning.concepts import ADAPTER, Concepts, disable_adapter, install_adapter
from diffii_core.models import LoadedModel
from diffii_core.models.ddim import Schedule
from diffii_core.oom import smaller_batch
from diffii_core.seeding import derive_seed, generator
from diffii_core.threads import learning_threads

if TYPE_CHECKING:
    from diffii_core.params import ConceptParams, JobParams

CHECKPOINT = "concepts-checkpoint.pt"
BALANCE_RATIO = 10  # class sizes differing by more than this make "auto" sampling class-balanced


class SliceEnded(Exception):
    """Learning stopped at an optimiser-step boundary because `slice_over` said so, its checkpoint
    written: calling `learn_concepts` again with the same checkpoint folder goes on from `step`."""

    def __init__(self, step: int, steps: int) -> None:
        super().__init__(f"concept learning paused at step {step} of {steps}")
        self.step, self.steps = step, steps


def learn_concepts(
    model: LoadedModel,
    dataset: Any,
    params: JobParams,
    *,
    checkpoint_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    slice_over: Callable[[int], bool] | None = None,
) -> Concepts:
    """Learn the concepts of every class of `dataset` (a diffii_core Dataset) for params.method:

    1. `set_up_tokens`      each class's placeholder tokens, their rows at the published start
    2. `build_lora`         the LoRA shared by all classes (none when the method learns tokens only)
    3. `_Run.start`         AdamW over the rows and the LoRA, autocast and its gradient scaler
    4. `_resume`            a checkpoint of this same run, when `checkpoint_dir` holds one
    5. `batch_stream`       training views drawn from the run's generator, decoded batch by batch
    6. `_Run.optimise`      one optimisation step, repeated `concepts.steps` times; its micro-batch runs
                            in smaller slices after the GPU ran out of memory
    7. `_checkpoint`        every `checkpoint_every` steps, at the last, and where a slice ends
    8. `learned_concepts`   the rows and the LoRA, read back as `Concepts`

    `should_stop` is asked before every micro-batch (`Cancelled` if it says so): a stop is seen
    within one pass, not one whole optimiser step of `gradient_accumulation` passes. `slice_over` is
    asked after every optimiser step short of the last, with the step reached: True writes the
    checkpoint and raises `SliceEnded` (it needs `checkpoint_dir`). The concepts are the same bytes
    however the run is sliced or resumed: it runs at `learning_threads()`, the same thread count in
    every process that learns.

    The model is left holding them; enter `concepts_applied` with the result to use it."""
    with learning_threads():
        return _learn(model, dataset, params, checkpoint_dir, progress, should_stop, slice_over)


def _learn(
    model: LoadedModel,
    dataset: Any,
    params: JobParams,
    checkpoint_dir: Path | None,
    progress: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
    slice_over: Callable[[int], bool] | None,
) -> Concepts:
    if model.in_use is not None:
        raise RuntimeError(f"model {model.name!r} is in use by a job's concepts; learn outside that scope")
    cfg = params.concepts
    if slice_over is not None and checkpoint_dir is None:
        raise ValueError("learning in slices needs a checkpoint folder to resume from")
    with_lora = params.spec.concepts != "tokens"
    class_names = [c.name for c in dataset.classes]
    tokens, ids = set_up_tokens(model, class_names, params)
    model.installed = None  # the rows and the adapter change from here on
    run = _Run.start(model, params, ids, build_lora(model, params, with_lora))
    gen = generator(params.seed, "concept-learning")
    balanced = class_balanced([len(c.images) for c in dataset.classes], cfg.sampling)
    fingerprint = _run_fingerprint(model, params, dataset)
    step, losses = 0, []
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():
        step, losses = _resume(ckpt, fingerprint, model, ids, run.optimizer, run.scaler, gen, with_lora)
    # Built after a resume restored the generator, which it draws from.
    loader = batch_stream(dataset, params.resolution or model.resolution, balanced, cfg.batch_size, gen)
    batches = iter(loader)
    parts = 1  # slices each micro-batch runs in: doubled whenever the GPU runs out of memory
    adapted: list[str] = []

    try:
        while step < cfg.steps:
            drawn = gen.get_state()
            total = run.optimise(batches, gen, parts, should_stop)
            if total is None:
                # The step again from its first draw, in slices half as big.
                gen.set_state(drawn)
                batches = iter(loader)  # the sampler draws lazily: it had fetched nothing ahead
                smaller_batch(-(-cfg.batch_size // parts), "concept learning (micro-batch)")
                parts *= 2
                adapted.append(f"step {step + 1}: {_passes(cfg, parts)}")
                continue
            step += 1
            losses.append(total)
            ends = slice_over is not None and step < cfg.steps and slice_over(step)
            if ckpt is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps or ends):
                _checkpoint(
                    ckpt, fingerprint, step, losses, model, ids, run.optimizer, run.scaler, gen, with_lora
                )
            # After the checkpoint, so a caller that copies it elsewhere copies this step's.
            if progress is not None:
                progress(step, cfg.steps)
            if ends:
                raise SliceEnded(step, cfg.steps)
    finally:
        run.freeze()

    recipe = {
        "placeholder_init": cfg.placeholder_init,
        "lora_init": "gaussian" if with_lora else "none",
        "mixed_precision": run.precision,
        "sampling": "balanced" if balanced else "uniform",
        "effective_batch": str(cfg.batch_size * cfg.gradient_accumulation),
        **({"out_of_memory": "; ".join(adapted)} if adapted else {}),
        "prediction_type": model.prediction_type,
    }
    concepts = learned_concepts(model, params, tokens, ids, with_lora, step, losses, recipe)
    model.installed = concepts.fingerprint
    return concepts


# 1. Tokens -------------------------------------------------------------------------------------------


def set_up_tokens(
    model: LoadedModel, class_names: list[str], params: JobParams
) -> tuple[dict[str, list[str]], list[int]]:
    """Each class's placeholder tokens (`<diffii-c{i}-t{k}>`) in the tokenizer, and their embedding rows
    at the published start; returns the tokens by class and the rows' ids, in class order."""
    tokens = {
        name: placeholder_tokens(i, params.concepts.tokens_per_class) for i, name in enumerate(class_names)
    }
    ids = ensure_tokens(model, [t for name in class_names for t in tokens[name]])
    _init_placeholder_rows(model, ids, params)
    return tokens, ids


def _init_placeholder_rows(model: LoadedModel, ids: list[int], params: JobParams) -> None:
    """The published start: the metaclass word's embedding (the mean of its rows where the tokenizer
    splits it). "random": rows drawn from the spread of the existing rows, seeded by the job."""
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        if params.concepts.placeholder_init == "random":
            gen = generator(params.seed, "placeholder-init")
            scale = float(weight[: min(ids)].std())
            for row in ids:
                weight[row] = torch.randn(weight.shape[1], generator=gen).to(weight) * scale
            return
        word_ids = model.tokenizer(params.metaclass, add_special_tokens=False).input_ids or [0]
        start = weight[word_ids].mean(0)
        for row in ids:
            weight[row] = start


# 2. LoRA ---------------------------------------------------------------------------------------------


def build_lora(model: LoadedModel, params: JobParams, with_lora: bool) -> list[torch.nn.Parameter]:
    """The LoRA on every UNet attention projection (A ~ N(0, 1/r), B = 0, seeded by the job), trainable;
    none, and the adapter off, for a method that learns tokens only (DA-Fusion)."""
    if not with_lora:
        disable_adapter(model)
        return []
    install_adapter(model, params.concepts.lora_rank, init_seed=derive_seed(params.seed, "lora-init"))
    lora_params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    for p in lora_params:
        p.requires_grad_(True)
    return lora_params


# 3. and 6. The optimiser and one optimisation step -------------------------------------------------


def autocast_mode(cfg: ConceptParams, device: torch.device) -> str:
    """ "no", "bf16" or "fp16": what `auto` means on this device."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if device.type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _passes(cfg: ConceptParams, parts: int) -> str:
    micro = -(-cfg.batch_size // parts)
    return f"micro-batch {micro} x {cfg.gradient_accumulation * parts} accumulated passes per step"


@dataclass
class _Run:
    model: LoadedModel
    params: JobParams
    schedule: Schedule
    precision: str
    scaler: torch.amp.GradScaler
    optimizer: torch.optim.Optimizer
    embedding: torch.Tensor  # the text encoder's embedding weight: the placeholder rows train in it
    lora_params: list[torch.nn.Parameter]
    original: torch.Tensor  # the embedding before training: every other row is restored to it
    keep: torch.Tensor  # [rows] True for every row but the placeholders'

    @classmethod
    def start(
        cls, model: LoadedModel, params: JobParams, ids: list[int], lora_params: list[torch.nn.Parameter]
    ) -> _Run:
        """AdamW over the embedding (one rate) and the LoRA (its own rate, if set): fp32 weights and state,
        the forward under autocast, with a gradient scaler for fp16."""
        cfg = params.concepts
        embedding = model.text_encoder.get_input_embeddings().weight
        embedding.requires_grad_(True)
        original = embedding.detach().clone()
        keep = torch.ones(original.shape[0], dtype=torch.bool)
        keep[ids] = False
        groups: list[dict[str, Any]] = [{"params": [embedding]}]
        if lora_params:
            groups.append({"params": lora_params, "lr": cfg.lora_learning_rate or cfg.learning_rate})
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2)
        precision = autocast_mode(cfg, model.device)
        scaler = torch.amp.GradScaler(model.device.type, enabled=precision == "fp16")
        schedule = Schedule.from_config(model.scheduler_config)
        return cls(
            model, params, schedule, precision, scaler, optimizer, embedding, lora_params, original, keep
        )

    def optimise(
        self,
        batches: Iterator[tuple[torch.Tensor, list[int]]],
        gen: torch.Generator,
        parts: int,
        should_stop: Callable[[], bool] | None = None,
    ) -> float | None:
        """One optimisation step: `gradient_accumulation` micro-batches, the LoRA's gradients clipped, AdamW,
        then every embedding row but the placeholders restored. Returns the step's loss, or None when the
        GPU ran out of memory (the gradients cleared; the caller redraws the step in smaller slices).
        `Cancelled` before any micro-batch once `should_stop` says so (the step is abandoned; the last
        checkpoint stands)."""
        cfg = self.params.concepts
        total: float | None
        try:
            loss = 0.0
            for _ in range(cfg.gradient_accumulation):
                if should_stop is not None and should_stop():
                    self.optimizer.zero_grad(set_to_none=True)
                    raise Cancelled("concept learning was stopped")
                loss += self.accumulate(*next(batches), gen, parts, cfg.gradient_accumulation)
            total = loss
        except torch.OutOfMemoryError:
            if parts >= cfg.batch_size:
                raise  # a single image per pass does not fit: a real failure
            total = None
        if total is None:
            # Outside the except block, so the failed attempt's tensors are freed before the caller
            # empties the cache.
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.unscale_(self.optimizer)
        if self.lora_params:  # the published scripts clip the LoRA only, not the token rows
            torch.nn.utils.clip_grad_norm_(self.lora_params, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            # AdamW's decay and momentum touch every row; only the placeholders may move.
            self.embedding[self.keep] = self.original[self.keep]
        return total

    def freeze(self) -> None:
        """Training is over (or failed): nothing it trained needs gradients any more."""
        self.embedding.requires_grad_(False)
        for p in self.lora_params:
            p.requires_grad_(False)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.model.device.type, dtype=dtype)

    def accumulate(
        self, pixels: torch.Tensor, classes: list[int], gen: torch.Generator, parts: int, passes: int
    ) -> float:
        """Backpropagate the loss of one micro-batch over `passes`, run in `parts` slices (after the GPU
        ran out of memory). Every random draw is made for the whole micro-batch first, so the slices
        see the noise, timesteps and posterior samples the whole would have: the gradients sum to the
        same, the effective batch is unchanged, and later draws stay in step. Returns the loss."""
        model, tpc = self.model, self.params.concepts.tokens_per_class
        with torch.no_grad():
            dist = self._posterior(pixels.to(model.device, model.dtype), parts)
            latents = dist.sample(generator=gen).float().cpu() * model.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, self.schedule.num_train_timesteps, (latents.shape[0],), generator=gen)
        alpha = self.schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
        target = self.schedule.target(latents, noise, alpha)
        texts = [concept_prompt(placeholder_tokens(c, tpc), self.params.metaclass) for c in classes]
        total, n = 0.0, latents.shape[0]
        for rows in torch.arange(n).tensor_split(min(parts, n)):
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            with self.autocast():
                hidden = model.text_encoder(tokenize(model, texts[lo:hi]))[0]
                pred = model.unet(
                    noisy[lo:hi].to(model.device, model.dtype), t[lo:hi].to(model.device), hidden
                )
            loss = F.mse_loss(pred.sample.float(), target[lo:hi].to(model.device))
            if parts > 1:
                loss = loss * ((hi - lo) / n)
            loss = loss / passes
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        return total

    def _posterior(self, pixels: torch.Tensor, parts: int) -> Any:
        if parts == 1:
            return self.model.vae.encode(pixels).latent_dist
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        slices = [
            self.model.vae.encode(x).latent_dist.parameters
            for x in pixels.tensor_split(min(parts, pixels.shape[0]))
        ]
        return DiagonalGaussianDistribution(torch.cat(slices))


# 5. The batch stream ---------------------------------------------------------------------------------

# (image index, crop top fraction, crop left fraction, flip): everything random about one training view.
View = tuple[int, float, float, bool]


class TrainingImages(TorchDataset):
    """The dataset's images, opened and decoded only when a batch asks for them."""

    def __init__(self, items: list[tuple[Any, int]], resolution: int) -> None:
        self.items = items  # (dataset image item with .open(), class index)
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, view: View) -> tuple[torch.Tensor, int]:
        index, top_u, left_u, flip = view
        item, label = self.items[index]
        image = item.open().convert("RGB")
        # Shorter side to the resolution, then the random crop and flip (the published transforms).
        w, h = image.size
        scale = self.resolution / min(w, h)
        size = (max(self.resolution, round(w * scale)), max(self.resolution, round(h * scale)))
        pixels = to_tensor(image.resize(size, Image.Resampling.BICUBIC))
        top = int(top_u * (pixels.shape[1] - self.resolution + 1))
        left = int(left_u * (pixels.shape[2] - self.resolution + 1))
        crop = pixels[:, top : top + self.resolution, left : left + self.resolution]
        return (crop.flip(-1) if flip else crop), label


def class_balanced(counts: list[int], mode: str) -> bool:
    if mode != "auto":
        return mode == "balanced"
    return max(counts) > BALANCE_RATIO * min(counts)


class ViewSampler:
    """Batches of views drawn from the run's generator as the loader asks for them, so a resumed run
    draws what the uninterrupted one would."""

    def __init__(self, class_sizes: list[int], balanced: bool, batch_size: int, gen: torch.Generator):
        self.offsets = [sum(class_sizes[:c]) for c in range(len(class_sizes))]
        self.sizes, self.balanced, self.batch_size, self.gen = class_sizes, balanced, batch_size, gen

    def pick(self) -> int:
        if self.balanced:  # a class uniformly, then one of its images: tail classes get their share
            c = int(torch.randint(0, len(self.sizes), (1,), generator=self.gen))
            return self.offsets[c] + int(torch.randint(0, self.sizes[c], (1,), generator=self.gen))
        return int(torch.randint(0, sum(self.sizes), (1,), generator=self.gen))

    def __iter__(self) -> Iterator[list[View]]:
        while True:
            views = []
            for _ in range(self.batch_size):
                index = self.pick()
                u = torch.rand(3, generator=self.gen, dtype=torch.float64).tolist()
                views.append((index, u[0], u[1], u[2] < 0.5))
            yield views


def _collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, list[int]]:
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def batch_stream(
    dataset: Any, resolution: int, balanced: bool, batch_size: int, gen: torch.Generator
) -> DataLoader:
    """Batches of training views, drawn from `gen` as the loop asks for them and decoded per batch. No
    loader workers: they would fetch ahead, drawing views out of turn with the noise, and a resumed run
    would no longer match an uninterrupted one."""
    images = TrainingImages([(item, c.index) for c in dataset.classes for item in c.images], resolution)
    sampler = ViewSampler([len(c.images) for c in dataset.classes], balanced, batch_size, gen)
    return DataLoader(images, batch_sampler=sampler, collate_fn=_collate, num_workers=0)


# 8. The result ---------------------------------------------------------------------------------------


def learned_concepts(
    model: LoadedModel, params: JobParams, tokens: dict[str, list[str]], ids: list[int], with_lora: bool,
    steps: int, losses: list[float], recipe: dict[str, str],
) -> Concepts:  # fmt: skip
    """The trained rows and LoRA, copied off the model in fp32 on the CPU, with what made them."""
    cfg = params.concepts
    lora = {}
    if with_lora:
        state = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER)
        lora = {k: v.detach().float().cpu().clone() for k, v in state.items()}
    weight = model.text_encoder.get_input_embeddings().weight
    all_tokens = [t for name in tokens for t in tokens[name]]
    return Concepts(
        class_names=list(tokens),
        tokens=tokens,
        embeddings={
            t: weight[i].detach().float().cpu().clone() for t, i in zip(all_tokens, ids, strict=True)
        },
        lora=lora,
        lora_rank=cfg.lora_rank if with_lora else 0,
        metaclass=params.metaclass,
        model={"name": model.name, "revision": model.revision},
        steps=steps,
        losses=[round(v, 6) for v in losses[-1000:]],
        recipe=recipe,
    )


# 4. and 7. Checkpoints ---------------------------------------------------------------------------


def _run_fingerprint(model: LoadedModel, params: JobParams, dataset: Any) -> str:
    files = [[c.name, [item.path for item in c.images]] for c in dataset.classes]
    blob = json.dumps([model.revision, params.model_dump(mode="json"), files], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _checkpoint(
    path: Path, fingerprint: str, step: int, losses: list[float], model: LoadedModel, ids: list[int],
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, gen: torch.Generator, with_lora: bool,
) -> None:  # fmt: skip
    weight = model.text_encoder.get_input_embeddings().weight
    lora = get_peft_model_state_dict(model.unet, adapter_name=ADAPTER) if with_lora else {}
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "losses": losses,
        "rows": weight[ids].detach().clone(),
        "lora": {k: v.detach().clone() for k, v in lora.items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "generator": gen.get_state(),
    }
    with atomic_path(path) as tmp:  # a crash mid-write leaves the previous checkpoint whole
        torch.save(state, tmp)


def _resume(
    path: Path, fingerprint: str, model: LoadedModel, ids: list[int], optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, gen: torch.Generator, with_lora: bool,
) -> tuple[int, list[float]]:  # fmt: skip
    state = torch.load(path, weights_only=False)
    if state.get("fingerprint") != fingerprint:
        return 0, []  # a checkpoint of other parameters or data: start over rather than mix runs
    weight = model.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids] = state["rows"]
    if with_lora:
        set_peft_model_state_dict(model.unet, state["lora"], adapter_name=ADAPTER)
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    gen.set_state(state["generator"])
    return int(state["step"]), list(state["losses"])
