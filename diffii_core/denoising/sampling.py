"""Two-stage guided sampling with a chosen sampler: the suffixed prompt for the early timesteps
(t >= T * (1 - split_ratio)), the plain prompt after; classifier-free guidance on the raw model output.

Samplers: `ddim` (eta 0; Diff-II's published sampler, and the inverse of its inversion) and
`dpm-solver++` (diffusers' DPMSolverMultistepScheduler, order 2: what the published Diff-Mix baselines
use). Both read the model's own schedule (prediction type, spacing, zero-terminal-SNR rescaling)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DPMSolverMultistepScheduler

from diffii_core.denoising.unet import predict_noise
from diffii_core.models import LoadedModel
from diffii_core.models.ddim import Schedule, denoise, denoise_timesteps, suffix_steps

if TYPE_CHECKING:
    from diffii_core.params import JobParams

Predict = Callable[[torch.Tensor, int, int], torch.Tensor]
_DPM_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "timestep_spacing", "steps_offset", "rescale_betas_zero_snr",
)  # fmt: skip


def _dpm_scheduler(config: dict[str, Any], steps: int) -> DPMSolverMultistepScheduler:
    kept = {k: config[k] for k in _DPM_KEYS if k in config}
    scheduler = DPMSolverMultistepScheduler.from_config(kept, algorithm_type="dpmsolver++", solver_order=2)
    scheduler.set_timesteps(steps)
    return scheduler


def sampler_timesteps(config: dict[str, Any], sampler: str, steps: int) -> list[int]:
    """The descending timesteps of a full `steps`-step run of `sampler`."""
    if sampler == "dpm-solver++":
        return [int(t) for t in _dpm_scheduler(config, steps).timesteps]
    return denoise_timesteps(config, steps)


def denoise_steps(strength: float, steps: int) -> int:
    """How many of `steps` an img2img image of strength s runs: int(s * steps) as diffusers counts them,
    at least one (a zero-step image would be the reference itself, not a synthetic one)."""
    return max(1, min(steps, int(steps * strength)))


def img2img_timesteps(config: dict[str, Any], sampler: str, steps: int, strength: float) -> list[int]:
    """The tail of the schedule that an image of strength s is denoised over."""
    timesteps = sampler_timesteps(config, sampler, steps)
    return timesteps[len(timesteps) - denoise_steps(strength, steps) :]


def run_sampler(
    config: dict[str, Any], sampler: str, steps: int, timesteps: list[int], x: torch.Tensor, predict: Predict
) -> torch.Tensor:
    """Denoise x over `timesteps`, the tail of a `steps`-step schedule; predict(x, t, i) gives the raw
    model output at step i."""
    if sampler == "ddim":
        return denoise(x, predict, Schedule.from_config(config), timesteps)
    scheduler = _dpm_scheduler(config, steps)
    begin = len(scheduler.timesteps) - len(timesteps)
    scheduler.set_begin_index(begin)  # img2img: the multistep history starts at the tail, as diffusers'
    for i, t in enumerate(scheduler.timesteps[begin:]):
        x = scheduler.step(predict(x, int(t), i), t, x).prev_sample
    return x


def sample_two_stage(
    model: LoadedModel,
    latents: torch.Tensor,
    plain: torch.Tensor,
    suffixed: torch.Tensor,
    uncond: torch.Tensor,
    params: JobParams,
    timesteps: list[int] | None = None,
) -> torch.Tensor:
    """Denoise latents [B, c, h, w] with params' sampler, steps, split ratio and guidance; plain/suffixed
    are per-image text states [B, 77, d]; `timesteps` (default: the whole schedule) may be its tail."""
    config, steps, sampler = model.scheduler_config, params.inference_steps, params.sampler
    split_ratio, guidance_scale = params.split_ratio, params.guidance_scale
    timesteps = timesteps or sampler_timesteps(config, sampler, steps)
    schedule = Schedule.from_config(config)
    use_suffix = suffix_steps(timesteps, split_ratio, schedule.num_train_timesteps)
    negative = uncond.expand(latents.shape[0], -1, -1)
    guided = guidance_scale != 1.0

    def predict(x: torch.Tensor, t: int, step: int) -> torch.Tensor:
        cond = suffixed if use_suffix[step] else plain
        if not guided:
            return predict_noise(model, x, t, cond)
        out = predict_noise(model, torch.cat([x, x]), t, torch.cat([negative, cond]))
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return run_sampler(config, sampler, steps, timesteps, latents.float(), predict)
