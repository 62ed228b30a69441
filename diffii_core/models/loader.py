"""Loading a model: the built-in `tiny` (or `tiny-v`, the same built as a v-prediction, zero-terminal-SNR
model), a local diffusers Stable Diffusion directory, or a hub id."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffii_core.errors import ModelError
from diffii_core.model_registry import BUILTIN_MODELS, shipped_world_model
from diffii_core.models.batch_invariance import stabilize
from diffii_core.models.ddim import Schedule
from diffii_core.threads import ensure_threads

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

BUILT_IN = {"tiny": "epsilon", "tiny-v": "v_prediction"}
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class LoadedModel:
    """The pipeline's parts, loaded once per process and shared by every job it runs."""

    name: str
    revision: str
    tokenizer: PreTrainedTokenizerBase
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    resolution: int
    # Whose concepts the UNet and embedding rows hold now, and whether a scope is using them; only
    # diffii_core.learning.concepts.concepts_applied reads or writes these.
    installed: str | None = field(default=None, repr=False)
    in_use: str | None = field(default=None, repr=False)

    @property
    def prediction_type(self) -> str:
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)


def pick_device(device: str | None = None) -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 when present (the UNet and VAE), else CPU fp32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


def load_model(
    name: str,
    models: Mapping[str, str] | None = None,
    *,
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load `name` as the model table maps it: "tiny", a diffusers directory or a hub id. `models`:
    the table (`diffii_core.model_registry.model_table`); None: the built-in models."""
    models = BUILTIN_MODELS if models is None else models
    if name not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelError(f"model {name!r} is not in the model list (known: {known})")
    source = models[name]
    ensure_threads()  # the engine's first use: threads that fit the CPUs (diffii_core.threads)
    dev, dtype = pick_device(device)
    if source in BUILT_IN:
        from diffii_core.models.tiny import TINY_RESOLUTION, build_tiny, scheduler_config, tiny_revision

        prediction = BUILT_IN[source]
        tokenizer, text_encoder, unet, vae = build_tiny()
        config = scheduler_config(prediction)
        parts = (tokenizer, text_encoder, unet, vae, config, tiny_revision(prediction), TINY_RESOLUTION)
        dtype = torch.float32  # the tiny model is a CPU smoke model; fp16 buys nothing there
    else:
        if source == "world":
            source = str(shipped_world_model())
        parts = _load_diffusers(name, source, dtype, cache_dir)
    tokenizer, text_encoder, unet, vae, scheduler_config, revision, resolution = parts
    # The text encoder stays fp32: its placeholder rows are trained, and it is cheap.
    text_encoder.to(dev, torch.float32)
    unet.to(dev)  # already in `dtype`: from_pretrained took torch_dtype, tiny is built fp32
    vae.to(dev)
    for module in (text_encoder, unet, vae):
        stabilize(module)
        module.requires_grad_(False)
        module.eval()
    Schedule.from_config(scheduler_config)  # refuses a prediction type we cannot sample, at load time
    return LoadedModel(
        name=name,
        revision=revision,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        device=dev,
        dtype=dtype,
        resolution=resolution,
    )


def _load_diffusers(name: str, source: str, dtype: torch.dtype, cache_dir: str | Path | None) -> tuple:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    local = Path(source).expanduser()
    is_dir = local.is_dir()
    if not is_dir and (source.startswith(("/", ".", "~")) or local.exists()):
        raise ModelError(f"model {name!r}: {source} is not a diffusers model directory")
    where = str(local) if is_dir else source
    if is_dir:
        missing = [part for part in PIPELINE_PARTS if not (local / part).is_dir()]
        if missing:
            folders = ", ".join(missing)
            raise ModelError(f"model {name!r}: {source} lacks the Stable Diffusion folder(s) {folders}")
    # A local directory must never reach for a hub (no network here; slow time-outs elsewhere).
    common: dict[str, Any] = (
        {"local_files_only": True} if is_dir else {"cache_dir": str(cache_dir) if cache_dir else None}
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, subfolder="tokenizer", **common)
        text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **common)
        unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", torch_dtype=dtype, **common)
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae", torch_dtype=dtype, **common)
        scheduler_config = _read_scheduler_config(where, common)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model {name!r} could not be loaded from {source}: {exc}") from exc
    revision = getattr(unet.config, "_commit_hash", None) or _directory_revision(local if is_dir else None)
    resolution = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    return tokenizer, text_encoder, unet, vae, scheduler_config, revision or source, resolution


def _read_scheduler_config(where: str, common: dict[str, Any]) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    config = dict(DDIMScheduler.load_config(where, subfolder="scheduler", **common))
    # Sampling is DDIM or DPM-Solver++ whatever scheduler the model ships with; keep the schedule's shape,
    # what the UNet predicts, and zero-terminal-SNR rescaling (SD 2.x and v-prediction fine-tunes).
    keep = {
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "set_alpha_to_one",
        "steps_offset",
        "prediction_type",
        "timestep_spacing",
        "rescale_betas_zero_snr",
    }
    return {k: v for k, v in config.items() if k in keep}


def _directory_revision(path: Path | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.sha256()
    for part in ("model_index.json", "unet/config.json", "text_encoder/config.json", "vae/config.json"):
        file = path / part
        if file.exists():
            digest.update(file.read_bytes())
    return "dir-" + digest.hexdigest()[:12]
