"""The seed papers' baselines (diff-mix, diff-aug, diff-gen, real-guidance, real-mix, da-fusion) on the
tiny model: archives, labels, soft labels, strengths, determinism and the base-model methods."""

from __future__ import annotations

import contextlib
import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

import diffii_core.pipeline.augment as augment_module
from diffii_core.denoising.sampling import denoise_steps, img2img_timesteps, sampler_timesteps
from diffii_core.learning.concepts import concepts_applied
from diffii_core.methods import METHODS
from diffii_core.methods.img2img import method_strengths, soft_label
from diffii_core.models import load_model
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.augment import augment
from diffii_core.pipeline.generate import generate_share

from .test_augment_cli import FAST, run_cli

BASELINES = ["diff-mix", "diff-aug", "diff-gen", "real-guidance", "real-mix", "da-fusion", "real-filter"]
FIELDS = {
    "file_name", "label", "label_index", "method", "seed", "sources", "source_class", "source_index",
    "target", "target_index", "strength", "soft_label", "suffix", "split_ratio",
}  # fmt: skip


def _params(method: str, **extra) -> JobParams:
    base = {
        "method": method,
        "seed": 5,
        "inference_steps": 4,
        "expansion": 1.5,
        "concepts": ConceptParams(steps=2, learning_rate=1e-3, lora_rank=4),
    }
    return JobParams.model_validate(base | extra)


def _read(archive: Path) -> tuple[list[str], list[dict], dict]:
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        lines = [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]
        job = json.loads(zf.read("job.json"))
    return names, lines, job


@pytest.fixture(scope="module")
def concepts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Concepts learned by the first method that needs them and reused by the others."""
    return tmp_path_factory.mktemp("concepts")


@pytest.mark.parametrize("method", BASELINES)
def test_each_method_writes_counts_labels_and_metadata(method, sample_dir, sample, concepts_dir, tmp_path):
    params = _params(method)
    kind_dir = concepts_dir / METHODS[method].concepts  # DA-Fusion learns tokens only: its own concepts
    summary = augment(sample_dir, tmp_path / "out.zip", params, batch_size=3, concepts_dir=kind_dir)
    names, lines, job = _read(tmp_path / "out.zip")
    index = job["class_index"]
    assert job["params"]["method"] == method
    assert summary.images == len(lines) == sum(int(1.5 * len(c.images)) for c in sample.classes)
    assert sorted(line["file_name"] for line in lines) == sorted(n for n in names if n.endswith(".png"))
    for cls in sample.classes:  # int(expansion * N_c) images made from each class's references
        assert sum(line["source_class"] == cls.name for line in lines) == int(1.5 * len(cls.images))
    for line in lines:
        assert set(line) >= FIELDS, FIELDS - set(line)
        assert line["method"] == method and line["suffix"] is None
        assert (
            line["file_name"].split("/")[0] == line["label"] and index[line["label"]] == line["label_index"]
        )
        assert index[line["source_class"]] == line["source_index"]
        assert index[line["target"]] == line["target_index"]
        if method == "diff-gen":
            assert line["sources"] == [] and line["strength"] == 1.0 and line["init"] == "noise"
        else:
            assert len(line["sources"]) == 1 and line["sources"][0].startswith(line["source_class"] + "/")
            assert line["strength"] in METHODS[method].strengths
        if method in ("diff-mix", "real-mix"):
            y = line["soft_label"]
            assert len(y) == len(index) and math.isclose(sum(y), 1.0)
            w = line["strength"] ** 0.5
            assert math.isclose(y[line["target_index"]], w if line["target"] != line["source_class"] else 1.0)
            assert line["label_index"] == int(
                max(range(len(y)), key=lambda i: (y[i], i == line["target_index"]))
            )
        else:
            assert line["soft_label"] is None
            assert line["label"] == line["source_class"] == line["target"]
        with zipfile.ZipFile(tmp_path / "out.zip") as zf:
            assert Image.open(io.BytesIO(zf.read(line["file_name"]))).size == (64, 64)
    if method in ("diff-mix", "real-mix"):  # targets are drawn over all classes
        assert len({line["target"] for line in lines}) > 1
    if method == "da-fusion":
        assert len({line["strength"] for line in lines}) > 1


@pytest.mark.parametrize(
    ("s", "gamma", "kappa", "src_w", "tgt_w"),
    [
        (0.5, 0.5, 1.0, 1 - math.sqrt(0.5), math.sqrt(0.5)),
        (0.7, 1.0, 0.9, 0.9 * 0.3, 0.9 * 0.7),
        (0.25, 0.5, 1.0, 0.5, 0.5),
        (1.0, 0.8, 0.9, 0.0, 0.9),
    ],
)
def test_soft_label_follows_the_formula(s, gamma, kappa, src_w, tgt_w):
    y = soft_label(4, 1, 3, s, kappa, gamma)
    assert math.isclose(y[1], src_w, abs_tol=1e-12) and math.isclose(y[3], tgt_w, abs_tol=1e-12)
    assert y[0] == y[2] == 0.0 and math.isclose(sum(y), kappa)


def test_source_equal_to_target_is_a_hard_label_of_mass_kappa():
    for s, gamma, kappa in [(0.5, 0.5, 1.0), (0.3, 1.0, 0.9)]:
        y = soft_label(3, 2, 2, s, kappa, gamma)
        assert y == [0.0, 0.0, pytest.approx(kappa)]


def test_parameters_validate_and_default_per_method():
    assert JobParams(method="da-fusion", strength=0.7).strength == [0.7]

    def drawn_from(method: str, **values: object) -> list[float]:
        return method_strengths(METHODS[method], JobParams(method=method, **values))

    assert drawn_from("da-fusion") == [0.25, 0.5, 0.75, 1.0]
    assert drawn_from("diff-mix") == [0.5] and drawn_from("diff-gen") == [1.0]
    assert drawn_from("diff-mix", strength=[0.3, 0.9]) == [0.3, 0.9]  # the job's own list wins
    assert not METHODS["real-guidance"].needs_concepts and not METHODS["real-mix"].needs_concepts
    assert all(
        METHODS[m].needs_concepts for m in ["diff-ii", "diff-mix", "diff-aug", "diff-gen", "da-fusion"]
    )
    for bad in [{"strength": [0.0]}, {"strength": [1.2]}, {"kappa": 0}, {"kappa": 1.5}, {"gamma": 0}]:
        with pytest.raises(ValidationError) as info:
            JobParams.model_validate({"method": "diff-mix"} | bad)
        assert next(iter(bad)) in str(info.value)
    with pytest.raises(ValidationError, match="diff-gen"):
        JobParams(method="diff-gen", strength=[0.5])


def _run(model, params, sample, cls_index=0, references=None, batch_size=4, start=0, stop=1, concepts=None):
    cls = sample.classes[cls_index]
    refs = references if references is not None else [i.open() for i in cls.images]
    with contextlib.ExitStack() as stack:
        if model.in_use is None:  # the session's trained model is in its concepts' scope already
            stack.enter_context(concepts_applied(model, concepts))
        return list(
            generate_share(
                model, concepts, None, class_name=cls.name, label_index=cls.index,
                class_names=sample.class_names(), source_names=[f"ref{i}" for i in range(len(refs))],
                params=params, start=start, stop=stop, references=refs, batch_size=batch_size,
            )
        )  # fmt: skip


@pytest.fixture(scope="module")
def base_model():
    """A model that never has concepts applied (real-guidance / real-mix leave it at the base)."""
    return load_model("tiny")


def test_strength_runs_the_expected_number_of_denoising_steps(base_model, sample):
    calls = []
    handle = base_model.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        # int(s * steps) as diffusers counts: 0.7 * 8 = 5.6 runs 5 steps, not round()'s 6.
        for s, expected in [(0.25, 2), (0.5, 4), (0.7, 5), (1.0, 8)]:
            params = _params("real-guidance", inference_steps=8, strength=[s])
            calls.clear()
            images = _run(base_model, params, sample)
            assert len(calls) == expected == denoise_steps(s, 8)  # guidance runs both halves in one call
            assert images[0].metadata["denoise_steps"] == expected
            full = sampler_timesteps(base_model.scheduler_config, params.sampler, 8)
            tail = img2img_timesteps(base_model.scheduler_config, params.sampler, 8, s)
            assert tail == full[8 - expected :]
    finally:
        handle.remove()


def test_strength_one_ignores_the_reference(base_model, sample):
    a, b = sample.classes[0].images[0].open(), sample.classes[2].images[0].open()
    assert a.tobytes() != b.tobytes()
    full = _params("real-guidance", strength=[1.0])
    assert (
        _run(base_model, full, sample, references=[a])[0].png
        == _run(base_model, full, sample, references=[b])[0].png
    )
    half = _params("real-guidance", strength=[0.5])
    assert (
        _run(base_model, half, sample, references=[a])[0].png
        != _run(base_model, half, sample, references=[b])[0].png
    )


def test_outputs_come_back_at_the_reference_size_by_default(base_model, sample):
    params = _params("real-guidance", resolution=32)
    resized = _run(base_model, params, sample)[0]
    assert Image.open(io.BytesIO(resized.png)).size == (64, 64) and resized.metadata["size"] == [64, 64]
    square = _run(base_model, params.model_copy(update={"resize_to_source": False}), sample)[0]
    assert Image.open(io.BytesIO(square.png)).size == (32, 32)


@pytest.mark.parametrize("method", ["real-guidance", "real-mix"])
def test_base_model_methods_touch_no_learned_weights(method, sample_dir, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("concept learning must be skipped")

    seen = []
    real_load = augment_module.load_model

    def load(*args, **kwargs):
        seen.append(real_load(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(steps, "learn_concepts", forbidden)
    monkeypatch.setattr(steps, "invert_class", forbidden)
    monkeypatch.setattr(augment_module, "load_model", load)
    augment(sample_dir, tmp_path / "out.zip", _params(method, expansion=1), batch_size=4)
    model = seen[0]
    assert not getattr(model.unet, "peft_config", None)  # no LoRA adapter was ever installed
    assert not [t for t in model.tokenizer.get_vocab() if t.startswith("<diffii-")]
    assert model.installed == "base" and model.in_use is None
    _, lines, _ = _read(tmp_path / "out.zip")
    assert {line["method"] for line in lines} == {method}


@pytest.mark.parametrize("method", ["diff-aug", "diff-mix"])
def test_images_do_not_depend_on_the_batch_size(method, trained, sample):
    model, concepts = trained
    # Several strengths, so a batch mixes images of different step counts (as DA-Fusion's do).
    params = _params(method, inference_steps=6, strength=[0.25, 0.5, 0.75, 1.0])
    one = _run(model, params, sample, batch_size=1, stop=5, concepts=concepts)
    four = _run(model, params, sample, batch_size=4, stop=5, concepts=concepts)
    assert [g.png for g in one] == [g.png for g in four]
    assert [g.metadata for g in one] == [g.metadata for g in four]
    tail = _run(model, params, sample, batch_size=3, start=2, stop=5, concepts=concepts)
    assert [g.png for g in tail] == [g.png for g in four[2:]]
    other = _run(
        model, params.model_copy(update={"seed": 6}), sample, batch_size=4, stop=5, concepts=concepts
    )
    assert all(a.png != b.png for a, b in zip(one, other, strict=True))


def test_concept_methods_need_their_concepts(base_model, sample):
    with pytest.raises(ValueError, match="needs learned concepts"):  # generate_share's one check
        _run(base_model, _params("diff-aug"), sample)


def test_img2img_methods_need_references(trained, sample):
    model, concepts = trained
    with pytest.raises(ValueError, match="reference"):
        _run(model, _params("diff-aug"), sample, references=[], concepts=concepts)


def test_cli_runs_a_baseline_method(sample_dir, tmp_path):
    out = tmp_path / "rg.zip"
    run_cli("augment", sample_dir, "--out", out, "--method", "real-guidance", "--expansion", "1", *FAST)
    _, lines, job = _read(out)
    assert job["params"]["method"] == "real-guidance"
    assert {line["method"] for line in lines} == {"real-guidance"}
    assert torch.tensor([line["strength"] for line in lines]).eq(0.5).all()
