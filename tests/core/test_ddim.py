import math

import pytest
import torch

from diffii_core.models.ddim import (
    Schedule,
    denoise,
    denoise_timesteps,
    inversion_timesteps,
    invert,
    suffix_steps,
)
from diffii_core.models.tiny import SCHEDULER_CONFIG


@pytest.fixture(scope="module")
def schedule() -> Schedule:
    return Schedule.from_config(SCHEDULER_CONFIG)


def test_split_ratio_switches_prompts_at_the_method_timesteps():
    timesteps = denoise_timesteps(SCHEDULER_CONFIG, 25)
    assert timesteps[0] == 961 and timesteps[-1] == 1
    assert suffix_steps(timesteps, 0.0) == [False] * 25
    assert suffix_steps(timesteps, 1.0) == [True] * 25
    mask = suffix_steps(timesteps, 0.3)
    assert [t for t, m in zip(timesteps, mask, strict=True) if m] == [t for t in timesteps if t >= 700]
    assert [t for t, m in zip(timesteps, mask, strict=True) if m] == [961, 921, 881, 841, 801, 761, 721]


def test_inversion_ends_where_denoising_starts():
    assert inversion_timesteps(961, 50)[-1] == 961
    assert inversion_timesteps(961, 50)[0] == 1
    assert inversion_timesteps(961, 1) == [961]
    steps = inversion_timesteps(961, 200)
    assert steps == sorted(steps)


def test_inversion_is_exact_with_a_zero_noise_prediction(schedule):
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    zero = lambda x, t, *rest: torch.zeros_like(x)  # noqa: E731
    down = denoise_timesteps(SCHEDULER_CONFIG, 25)
    xt = invert(x0, zero, schedule, list(reversed(down)))
    assert not torch.allclose(xt, x0)
    back = denoise(xt, zero, schedule, down)
    assert torch.allclose(back, x0, atol=1e-10)


def test_inversion_error_shrinks_with_more_steps_for_a_smooth_predictor(schedule):
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def smooth(x: torch.Tensor, t: int, *rest) -> torch.Tensor:
        return 0.5 * torch.tanh(x) * math.cos(t / 700)

    errors = []
    for steps in (10, 25, 100):
        down = denoise_timesteps(SCHEDULER_CONFIG, steps)
        back = denoise(invert(x0, smooth, schedule, list(reversed(down))), smooth, schedule, down)
        errors.append(float((back - x0).abs().max()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.2 * errors[0]
