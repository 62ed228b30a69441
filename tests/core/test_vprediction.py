"""v-prediction and zero-terminal-SNR models (SD 2.x and fine-tunes): read from the scheduler config and
honoured by training, inversion and both samplers; unsupported prediction types are refused."""

import io
import json
import zipfile

import pytest
import torch
from PIL import Image

from diffii_core.denoising.sampling import run_sampler, sampler_timesteps
from diffii_core.errors import ModelError
from diffii_core.learning.training import learn_concepts
from diffii_core.models import load_model
from diffii_core.models.ddim import Schedule, denoise, denoise_timesteps
from diffii_core.models.tiny import scheduler_config
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline.augment import augment

V_CONFIG = scheduler_config("v_prediction")
MODELS = {"tiny-v": "tiny-v"}


def test_the_v_tiny_reads_its_schedule_from_the_config():
    model = load_model("tiny-v", MODELS)
    assert model.prediction_type == "v_prediction"
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    schedule = Schedule.from_config(model.scheduler_config)
    assert schedule.alphas_cumprod[-1] < 1e-6  # zero terminal SNR
    assert denoise_timesteps(model.scheduler_config, 25)[0] == 999  # trailing spacing starts at T - 1


def test_v_output_splits_into_the_clean_latent_and_the_noise():
    schedule = Schedule.from_config(V_CONFIG)
    gen = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64),
        torch.randn(2, 4, 8, 8, generator=gen),
    )
    for t in (0, 500, 999):
        a = torch.tensor(schedule.alpha(t), dtype=torch.float64)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        v = schedule.target(x0, eps.double(), a)
        got_x0, got_eps = schedule.split(xt, v, float(a))
        assert torch.allclose(got_x0, x0, atol=1e-8) and torch.isfinite(got_eps).all()


@pytest.mark.parametrize("sampler", ["ddim", "dpm-solver++"])
def test_both_samplers_reach_the_clean_latent_with_an_exact_v_predictor(sampler):
    """With the true velocity for a known x0, sampling from pure noise must end at x0. Read as epsilon
    (the old behaviour), the same outputs land far away."""
    schedule = Schedule.from_config(V_CONFIG)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def oracle(x, t, i):
        a = schedule.alpha(t)
        eps = (x - a**0.5 * x0) / (1 - a) ** 0.5
        return a**0.5 * eps - (1 - a) ** 0.5 * x0

    steps = 10
    config = V_CONFIG | {"set_alpha_to_one": True}  # DDIM's last step then lands on alpha 1, as DPM's does
    schedule = Schedule.from_config(config)
    start = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = run_sampler(config, sampler, steps, sampler_timesteps(config, sampler, steps), start, oracle)
    assert torch.allclose(out.double(), x0, atol=1e-3)
    as_epsilon = Schedule(schedule.alphas_cumprod, schedule.final_alpha, 1000, "epsilon")
    wrong = denoise(start, oracle, as_epsilon, denoise_timesteps(V_CONFIG, steps)[1:])
    assert not torch.allclose(wrong, x0, atol=1e-1)


def test_training_a_v_model_targets_the_velocity(sample):
    model = load_model("tiny-v", MODELS)
    params = JobParams(model="tiny-v", seed=2, concepts=ConceptParams(steps=2, lora_rank=4))
    concepts = learn_concepts(model, sample, params)
    assert concepts.recipe["prediction_type"] == "v_prediction"
    schedule = Schedule.from_config(V_CONFIG)
    x0, eps, a = torch.ones(1), torch.zeros(1), torch.tensor([0.25])
    assert torch.allclose(schedule.target(x0, eps, a), torch.tensor([-(0.75**0.5)]))


@pytest.mark.parametrize("method", ["diff-ii", "diff-aug"])
def test_a_v_model_runs_the_methods_end_to_end(method, sample_dir, tmp_path):
    params = JobParams(
        model="tiny-v", method=method, seed=4, expansion=1, inference_steps=4, inversion_steps=4,
        concepts=ConceptParams(steps=2, lora_rank=4),
    )  # fmt: skip
    augment(sample_dir, tmp_path / "v.zip", params, models=MODELS, batch_size=4)
    with zipfile.ZipFile(tmp_path / "v.zip") as zf:
        pngs = [n for n in zf.namelist() if n.endswith(".png")]
        pixels = [Image.open(io.BytesIO(zf.read(n))).convert("L") for n in pngs]
        job = json.loads(zf.read("job.json"))
    assert pngs and job["model"]["revision"].startswith("tiny-v-")
    assert any(im.getextrema()[0] != im.getextrema()[1] for im in pixels)  # not one flat colour


def test_unsupported_prediction_types_are_refused_by_name():
    with pytest.raises(ModelError, match="'sample'"):
        Schedule.from_config(scheduler_config() | {"prediction_type": "sample"})
    with pytest.raises(ModelError, match="zero-terminal-SNR"):
        Schedule.from_config(scheduler_config() | {"rescale_betas_zero_snr": True})
