"""Concept learning: placeholder rows and a shared LoRA."""

import torch

from diffii_core.concepts import Concepts, apply_concepts, evaluation_loss, learn_concepts
from diffii_core.errors import Cancelled
from diffii_core.generate import generate_share
from diffii_core.inversion import invert_class
from diffii_core.models import load_model
from diffii_core.params import ConceptParams, JobParams


def _params(steps: int, **extra) -> JobParams:
    return JobParams(
        seed=3,
        inference_steps=6,
        inversion_steps=6,
        concepts=ConceptParams(steps=steps, learning_rate=3e-3, lora_rank=4, **extra),
    )


def test_training_lowers_the_fixed_noise_loss_and_touches_only_placeholder_rows(sample, fresh_model):
    params = _params(40)
    before_loss = evaluation_loss(fresh_model, sample, params)
    rows_before = fresh_model.text_encoder.get_input_embeddings().weight.detach().clone()
    concepts = learn_concepts(fresh_model, sample, params)
    after_loss = evaluation_loss(fresh_model, sample, params)
    assert after_loss < before_loss
    rows_after = fresh_model.text_encoder.get_input_embeddings().weight.detach()
    ids = fresh_model.tokenizer.convert_tokens_to_ids([t for v in concepts.tokens.values() for t in v])
    others = torch.ones(rows_after.shape[0], dtype=torch.bool)
    others[ids] = False
    n_old = rows_before.shape[0]
    assert torch.equal(rows_after[:n_old][others[:n_old]], rows_before[others[:n_old]])
    # The placeholders started at the mean of the metaclass word's rows, and training moved them.
    start = rows_before[fresh_model.tokenizer(params.metaclass, add_special_tokens=False).input_ids].mean(0)
    assert all(not torch.allclose(rows_after[i], start) for i in ids)
    assert len(concepts.tokens) == len(sample.classes)


def test_saved_concepts_reproduce_the_trained_pipeline_on_a_fresh_model(sample, fresh_model, tmp_path):
    params = _params(8, tokens_per_class=2)
    concepts = learn_concepts(fresh_model, sample, params)
    assert all(len(v) == 2 for v in concepts.tokens.values())
    cls = sample.classes[0]
    images = [i.open() for i in cls.images]

    def make(model, c):
        pool = invert_class(model, c, images, cls.name, params)
        return [
            g.png
            for g in generate_share(
                model,
                c,
                pool,
                class_name=cls.name,
                label_index=0,
                class_names=[cls.name],
                source_names=[i.path for i in cls.images],
                params=params,
                start=0,
                stop=3,
            )
        ]

    trained_images = make(fresh_model, concepts)
    concepts.save(tmp_path / "concepts")
    assert {p.name for p in (tmp_path / "concepts").iterdir()} == {
        "concepts.json",
        "embeddings.safetensors",
        "lora.safetensors",
    }
    other = load_model("tiny")
    reloaded = Concepts.load(tmp_path / "concepts")
    apply_concepts(other, reloaded)
    assert make(other, reloaded) == trained_images
    apply_concepts(other, None)  # the base model makes other images
    assert make(other, reloaded) != trained_images


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(sample, tmp_path):
    params = _params(6, checkpoint_every=2)
    straight = learn_concepts(load_model("tiny"), sample, params)

    calls = {"n": 0}

    def stop_after_four_steps() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    interrupted = load_model("tiny")
    try:
        learn_concepts(
            interrupted, sample, params, checkpoint_dir=tmp_path, should_stop=stop_after_four_steps
        )
    except Cancelled:
        pass
    else:
        raise AssertionError("learning was not stopped")
    seen = []
    resumed = learn_concepts(
        load_model("tiny"),
        sample,
        params,
        checkpoint_dir=tmp_path,
        progress=lambda step, total: seen.append(step),
    )
    assert seen == [5, 6]  # steps 1-4 came from the checkpoint
    assert resumed.fingerprint == straight.fingerprint
