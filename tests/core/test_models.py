"""Model loading: the built-in tiny model, a diffusers directory, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffii_core.denoising.prompts import encode_prompts
from diffii_core.denoising.unet import predict_noise
from diffii_core.errors import ModelError
from diffii_core.models import load_model
from diffii_core.models.tiny import SCHEDULER_CONFIG


def _save_as_diffusers_directory(path: Path) -> Path:
    """The tiny model written the way a Stable Diffusion checkpoint is laid out on disk."""
    model = load_model("tiny")
    model.unet.save_pretrained(path / "unet")
    model.vae.save_pretrained(path / "vae")
    model.text_encoder.save_pretrained(path / "text_encoder")
    model.tokenizer.save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir()
    config = {"_class_name": "DDIMScheduler", **SCHEDULER_CONFIG}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return path


def test_the_tiny_model_is_the_same_in_every_load():
    a, b = load_model("tiny"), load_model("tiny")
    assert a.revision == b.revision and a.resolution == 64 and a.vae_scale == 8
    for (name, p), (_, q) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_a_diffusers_directory_loads_and_predicts_like_the_original(tmp_path):
    folder = _save_as_diffusers_directory(tmp_path / "sd-tiny")
    original = load_model("tiny")
    loaded = load_model("local", {"local": str(folder)})
    assert loaded.resolution == 64 and loaded.revision.startswith("dir-")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden_a = encode_prompts(original, ["a photo of a bird"] * 2)
    hidden_b = encode_prompts(loaded, ["a photo of a bird"] * 2)
    assert torch.equal(hidden_a, hidden_b)
    assert torch.equal(predict_noise(original, x, 500, hidden_a), predict_noise(loaded, x, 500, hidden_b))


def test_unknown_and_unloadable_models_get_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="'sd15' is not in the model list"):
        load_model("sd15", {"tiny": "tiny"})
    with pytest.raises(ModelError, match="not a diffusers model directory"):
        load_model("gone", {"gone": str(tmp_path / "missing")})
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    with pytest.raises(ModelError, match="lacks the Stable Diffusion folder"):
        load_model("partial", {"partial": str(partial)})
    broken = _save_as_diffusers_directory(tmp_path / "broken")
    (broken / "unet" / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="model 'broken' could not be loaded"):
        load_model("broken", {"broken": str(broken)})


def test_a_hub_id_with_no_hub_to_reach_fails_with_the_model_name(tmp_path):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, hence a process of its own.
    code = (
        "from diffii_core.models import load_model\n"
        "from diffii_core.errors import ModelError\n"
        "try:\n"
        f"    load_model('hub', {{'hub': 'some-org/some-sd-model'}}, cache_dir={str(tmp_path)!r})\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "model 'hub' could not be loaded from some-org/some-sd-model" in done.stdout, done.stderr


@pytest.mark.parametrize("name", ["tiny", "world"])
def test_a_rows_prediction_does_not_depend_on_how_many_rows_share_the_call(name):
    # CPU kernels switch algorithm with the batch (below and above 16 rows a 1x1 convolution did, on
    # AVX-512/AMX CPUs); every image's bytes rest on these rows being the same in any batch.
    model = load_model(name)
    c = model.unet.config
    x = torch.randn(
        32, c.in_channels, c.sample_size, c.sample_size, generator=torch.Generator().manual_seed(0)
    )
    hidden = encode_prompts(model, ["a photo of a bird"]).expand(32, -1, -1)
    full = predict_noise(model, x, 500, hidden)
    for rows in (1, 3, 8, 15, 16, 20):
        assert torch.equal(predict_noise(model, x[:rows], 500, hidden[:rows]), full[:rows]), rows
