"""DDIM (eta 0) sampling and inversion as plain functions, so the two-stage prompt switch and the
inversion path are explicit and testable with any predictor. A predictor returns what the UNet returns:
the noise for an epsilon model, the velocity for a v-prediction model (SD 2.x); the schedule knows which."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

from diffii_core.errors import ModelError

PREDICTION_TYPES = ("epsilon", "v_prediction")
NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # float64, indexed by training timestep
    final_alpha: float  # alpha after the last denoising step
    num_train_timesteps: int
    prediction_type: str = "epsilon"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        """diffusers' DDIM schedule, including `rescale_betas_zero_snr` and `timestep_spacing`."""
        prediction = config.get("prediction_type", "epsilon")
        if prediction not in PREDICTION_TYPES:
            raise ModelError(
                f"the model's scheduler predicts {prediction!r}; "
                f"diffii supports {', '.join(PREDICTION_TYPES)}"
            )
        if prediction == "epsilon" and config.get("rescale_betas_zero_snr"):
            # x0 = (x - sqrt(1 - a) eps) / sqrt(a) has no value at a = 0: such a model must predict v.
            raise ModelError("a zero-terminal-SNR schedule needs a v_prediction model, not epsilon")
        scheduler = DDIMScheduler.from_config(config)
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        final = 1.0 if scheduler.config.set_alpha_to_one else float(alphas[0])
        return cls(alphas, final, int(scheduler.config.num_train_timesteps), prediction)

    def alpha(self, t: int | None) -> float:
        return self.final_alpha if t is None else float(self.alphas_cumprod[t])

    def split(
        self, x: torch.Tensor, output: torch.Tensor, alpha_t: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from the model output at noise level alpha_t. The v form never divides by
        sqrt(alpha_t), so it stays finite at a zero-terminal-SNR model's last timestep."""
        a, b = math.sqrt(alpha_t), math.sqrt(1.0 - alpha_t)
        if self.prediction_type == "v_prediction":
            return a * x - b * output, a * output + b * x
        return (x - b * output) / a, output

    def target(self, x0: torch.Tensor, noise: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        """The training target for noisy = sqrt(a) x0 + sqrt(1 - a) noise: noise, or the velocity."""
        if self.prediction_type == "v_prediction":
            return alpha_t.sqrt() * noise - (1 - alpha_t).sqrt() * x0
        return noise


def denoise_timesteps(config: dict[str, Any], steps: int) -> list[int]:
    """The DDIM timesteps for `steps` steps, descending, as diffusers computes them."""
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def published_inversion_timesteps(config: dict[str, Any], steps: int) -> list[int]:
    """diffusers' DDIMInverseScheduler timesteps, ascending: 1, 6, ..., 996 for 200 steps on SD 1.5,
    as the published code inverts (its end, 996, lies above where 25-step denoising starts, 961)."""
    return list(reversed(denoise_timesteps(config, steps)))


def inversion_timesteps(t_start: int, steps: int) -> list[int]:
    """Ascending timesteps from 1 to t_start, so the inversion ends exactly where denoising begins
    whatever the two step counts are (the published code inverted to a slightly different t)."""
    if steps <= 1:
        return [t_start]
    return [round(1 + (t_start - 1) * i / (steps - 1)) for i in range(steps)]


def suffix_steps(timesteps: list[int], split_ratio: float, num_train_timesteps: int = 1000) -> list[bool]:
    """Per denoising step, whether the suffixed prompt is used: t >= T * (1 - s).
    s = 0 never uses the suffix, s = 1 always does."""
    if split_ratio <= 0:
        return [False] * len(timesteps)
    threshold = num_train_timesteps * (1.0 - split_ratio)
    return [t >= threshold - 1e-9 for t in timesteps]


def ddim_step(
    x: torch.Tensor, output: torch.Tensor, alpha_from: float, alpha_to: float, schedule: Schedule
) -> torch.Tensor:
    """Move x from the noise level alpha_from to alpha_to along the DDIM (eta 0) trajectory.
    The same formula serves denoising (alpha grows) and inversion (alpha shrinks)."""
    x0, eps = schedule.split(x, output, alpha_from)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * eps


def invert(
    x0: torch.Tensor, predict: NoisePredictor, schedule: Schedule, timesteps: list[int]
) -> torch.Tensor:
    """DDIM inversion: from a clean latent up to the last of `timesteps` (ascending). The noise is
    predicted at the current latent with the target timestep, as diffusers' inverse scheduler does."""
    x, alpha = x0, schedule.final_alpha
    for t in timesteps:
        output = predict(x, t)
        alpha_next = schedule.alpha(t)
        x = ddim_step(x, output, alpha, alpha_next, schedule)
        alpha = alpha_next
    return x


def denoise(
    x: torch.Tensor,
    predict: Callable[[torch.Tensor, int, int], torch.Tensor],
    schedule: Schedule,
    timesteps: list[int],
) -> torch.Tensor:
    """DDIM sampling over descending `timesteps`; predict(x, t, step_index) returns the model output."""
    for i, t in enumerate(timesteps):
        output = predict(x, t, i)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        x = ddim_step(x, output, schedule.alpha(t), schedule.alpha(t_prev), schedule)
    return x
