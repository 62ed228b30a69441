"""DDIM (eta 0) sampling and inversion as plain functions, so the two-stage prompt switch and the
inversion path are explicit and testable with any noise predictor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    alphas_cumprod: torch.Tensor  # float64, indexed by training timestep
    final_alpha: float  # alpha after the last denoising step
    num_train_timesteps: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        scheduler = DDIMScheduler.from_config(config)
        alphas = scheduler.alphas_cumprod.to(torch.float64)
        final = 1.0 if scheduler.config.set_alpha_to_one else float(alphas[0])
        return cls(alphas, final, int(scheduler.config.num_train_timesteps))

    def alpha(self, t: int | None) -> float:
        return self.final_alpha if t is None else float(self.alphas_cumprod[t])


def denoise_timesteps(config: dict[str, Any], steps: int) -> list[int]:
    """The DDIM timesteps for `steps` steps, descending, as diffusers computes them."""
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


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


def _x0_and_eps(x: torch.Tensor, eps: torch.Tensor, alpha_t: float) -> torch.Tensor:
    return (x - math.sqrt(1.0 - alpha_t) * eps) / math.sqrt(alpha_t)


def ddim_step(x: torch.Tensor, eps: torch.Tensor, alpha_from: float, alpha_to: float) -> torch.Tensor:
    """Move x from the noise level alpha_from to alpha_to along the DDIM (eta 0) trajectory.
    The same formula serves denoising (alpha grows) and inversion (alpha shrinks)."""
    x0 = _x0_and_eps(x, eps, alpha_from)
    return math.sqrt(alpha_to) * x0 + math.sqrt(1.0 - alpha_to) * eps


def invert(
    x0: torch.Tensor, predict: NoisePredictor, schedule: Schedule, timesteps: list[int]
) -> torch.Tensor:
    """DDIM inversion: from a clean latent up to the last of `timesteps` (ascending). The noise is
    predicted at the current latent with the target timestep, as diffusers' inverse scheduler does."""
    x, alpha = x0, schedule.final_alpha
    for t in timesteps:
        eps = predict(x, t)
        alpha_next = schedule.alpha(t)
        x = ddim_step(x, eps, alpha, alpha_next)
        alpha = alpha_next
    return x


def denoise(
    x: torch.Tensor,
    predict: Callable[[torch.Tensor, int, int], torch.Tensor],
    schedule: Schedule,
    timesteps: list[int],
    between_steps: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM sampling over descending `timesteps`; predict(x, t, step_index) returns the noise."""
    for i, t in enumerate(timesteps):
        eps = predict(x, t, i)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        x = ddim_step(x, eps, schedule.alpha(t), schedule.alpha(t_prev))
        if between_steps is not None:
            between_steps(i)
    return x
