"""Concept learning: placeholder rows and a shared LoRA, as the published recipe trains them."""

import pytest
import torch
import torch.nn.functional as F

from diffii_core.dataset import ClassInfo, Dataset, ImageItem
from diffii_core.denoising.prompts import concept_prompt, encode_prompts
from diffii_core.errors import ArtifactError, Cancelled
from diffii_core.images import fit_square, to_tensor
from diffii_core.inversion.invert import invert_class
from diffii_core.learning import training
from diffii_core.learning.concepts import Concepts, concepts_applied, install_adapter
from diffii_core.learning.training import SliceEnded, ViewSampler, class_balanced, learn_concepts
from diffii_core.methods import METHODS
from diffii_core.models import load_model
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.generate import generate_share


def _params(steps: int, **extra) -> JobParams:
    method = extra.pop("method", "diff-ii")
    return JobParams(
        method=method,
        seed=3,
        inference_steps=6,
        inversion_steps=6,
        concepts=ConceptParams(**({"steps": steps, "learning_rate": 3e-3, "lora_rank": 4} | extra)),
    )


@torch.no_grad()
def _fixed_loss(model, sample, concepts) -> float:
    """The epsilon-MSE on fixed images, noise and timesteps: comparable before and after training."""
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for c in sample.classes:
        pixels = torch.stack([to_tensor(fit_square(i.open(), 64)) for i in c.images])
        latents = model.vae.encode(pixels).latent_dist.mean * model.scaling_factor
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.full((latents.shape[0],), 500)
        a = 0.28
        noisy = a**0.5 * latents + (1 - a) ** 0.5 * noise
        hidden = encode_prompts(model, [concept_prompt(concepts.tokens[c.name], "object")] * len(c.images))
        total += float(F.mse_loss(model.unet(noisy, t, hidden).sample, noise))
    return total


def test_training_lowers_the_fixed_noise_loss_and_touches_only_placeholder_rows(sample):
    untrained = load_model("tiny")
    start = learn_concepts(untrained, sample, _params(0))  # the starting point: init rows, B = 0
    before_loss = _fixed_loss(untrained, sample, start)
    model = load_model("tiny")
    rows_before = model.text_encoder.get_input_embeddings().weight.detach().clone()
    concepts = learn_concepts(model, sample, _params(40))
    assert _fixed_loss(model, sample, concepts) < before_loss
    rows_after = model.text_encoder.get_input_embeddings().weight.detach()
    ids = model.tokenizer.convert_tokens_to_ids([t for v in concepts.tokens.values() for t in v])
    others = torch.ones(rows_after.shape[0], dtype=torch.bool)
    others[ids] = False
    n_old = rows_before.shape[0]
    assert torch.equal(rows_after[:n_old][others[:n_old]], rows_before[others[:n_old]])
    # The placeholders started at the metaclass word's embedding, and training moved them.
    init = rows_before[model.tokenizer("object", add_special_tokens=False).input_ids].mean(0)
    assert all(not torch.allclose(rows_after[i], init) for i in ids)
    assert torch.allclose(start.embeddings[start.tokens[sample.classes[0].name][0]], init)
    assert concepts.recipe["placeholder_init"] == "metaclass" and concepts.recipe["lora_init"] == "gaussian"
    assert len(concepts.tokens) == len(sample.classes)


def test_saved_concepts_reproduce_the_trained_pipeline_on_a_fresh_model(sample, fresh_model, tmp_path):
    params = _params(8, tokens_per_class=2)
    concepts = learn_concepts(fresh_model, sample, params)
    assert all(len(v) == 2 for v in concepts.tokens.values())
    cls = sample.classes[0]
    images = [i.open() for i in cls.images]

    def make(model, c, scope):
        with concepts_applied(model, scope):
            pool = invert_class(model, c, images, cls.name, params) if scope is not None else None
        with concepts_applied(model, scope):
            if pool is None:  # the base model: invert with the concepts, generate without them
                with pytest.raises(RuntimeError, match="concepts_applied"):
                    list(generate_share(model, c, None, class_name=cls.name, label_index=0,
                                        class_names=[cls.name], source_names=[], params=params, start=0,
                                        stop=1))  # fmt: skip
                return None
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

    trained_images = make(fresh_model, concepts, concepts)
    concepts.save(tmp_path / "concepts")
    assert {p.name for p in (tmp_path / "concepts").iterdir()} == {
        "concepts.json",
        "embeddings.safetensors",
        "lora.safetensors",
    }
    other = load_model("tiny")
    reloaded = Concepts.load(tmp_path / "concepts")
    assert reloaded.recipe == concepts.recipe
    assert make(other, reloaded, reloaded) == trained_images
    make(other, reloaded, None)  # diff-ii refuses to run on the base model's scope


def test_scopes_do_not_overlap_and_end_with_the_block(trained, sample):
    model, concepts = trained
    assert model.in_use == concepts.fingerprint
    with pytest.raises(RuntimeError, match="already in use"), concepts_applied(model, None):
        pass
    with pytest.raises(RuntimeError, match="learn outside that scope"):
        learn_concepts(model, sample, _params(1))
    base = load_model("tiny")
    with concepts_applied(base, None):
        assert base.in_use == "base"
    assert base.in_use is None


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(sample, tmp_path):
    params = _params(6, checkpoint_every=2, gradient_accumulation=2, batch_size=1)
    straight = learn_concepts(load_model("tiny"), sample, params)

    done: list[int] = []
    interrupted = load_model("tiny")
    with pytest.raises(Cancelled):
        learn_concepts(
            interrupted, sample, params, checkpoint_dir=tmp_path, progress=lambda s, t: done.append(s),
            should_stop=lambda: len(done) >= 4,
        )  # fmt: skip
    seen = []
    resumed = learn_concepts(
        load_model("tiny"), sample, params, checkpoint_dir=tmp_path, progress=lambda s, t: seen.append(s)
    )
    assert seen == [5, 6]  # steps 1-4 came from the checkpoint
    assert resumed.fingerprint == straight.fingerprint
    assert straight.recipe["effective_batch"] == "2"


class _TwoSteps:
    """A `slice_over` of two optimiser steps a slice; notes the slice's first step."""

    def __init__(self) -> None:
        self.first: int | None = None

    def __call__(self, step: int) -> bool:
        self.first = self.first or step
        return step - self.first >= 1


def test_learning_in_slices_gives_the_bytes_of_one_run(sample, tmp_path):
    """Each slice a call that resumes the last one's checkpoint, on the same model (a worker process
    that keeps it) or a fresh one (another worker); slices need not fall on checkpoint_every."""
    params = _params(7, checkpoint_every=3, gradient_accumulation=2, batch_size=1)
    straight = learn_concepts(load_model("tiny"), sample, params)
    model = load_model("tiny")
    ended, starts = [], []
    for round_ in range(10):
        two_steps = _TwoSteps()
        try:
            sliced = learn_concepts(
                model if round_ % 2 else load_model("tiny"), sample, params, checkpoint_dir=tmp_path,
                slice_over=two_steps,
            )  # fmt: skip
            break
        except SliceEnded as stop:
            ended.append(stop.step)
            starts.append(two_steps.first)
    assert ended == [2, 4, 6] and starts == [1, 3, 5]
    assert sliced.fingerprint == straight.fingerprint and sliced.steps == 7
    assert sliced.losses == straight.losses
    with pytest.raises(ValueError, match="checkpoint"):
        learn_concepts(load_model("tiny"), sample, params, slice_over=lambda step: True)


def test_a_stop_is_seen_before_the_next_micro_batch(sample, monkeypatch):
    """With 8 passes per optimiser step, a stop is seen within one pass, not after the whole step."""
    passes = []
    real = training._Run.accumulate

    def counted(self, *args, **kwargs):
        passes.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(training._Run, "accumulate", counted)
    params = _params(3, gradient_accumulation=8, batch_size=1)
    with pytest.raises(Cancelled):
        learn_concepts(load_model("tiny"), sample, params, should_stop=lambda: len(passes) >= 3)
    assert len(passes) == 3  # the step's fourth pass never ran


def test_lora_starts_from_the_published_normal_init(fresh_model):
    install_adapter(fresh_model, rank=4, init_seed=0)
    a = torch.cat([p.detach().flatten() for n, p in fresh_model.unet.named_parameters() if "lora_A" in n])
    b = torch.cat([p.detach().flatten() for n, p in fresh_model.unet.named_parameters() if "lora_B" in n])
    assert abs(float(a.std()) - 1 / 4) < 0.02  # N(0, 1/r); kaiming would give ~1/sqrt(3 * fan_in)
    assert torch.count_nonzero(b) == 0


def test_bf16_autocast_keeps_trainable_weights_fp32_and_learns(sample, fresh_model):
    concepts = learn_concepts(fresh_model, sample, _params(3, mixed_precision="bf16"))
    assert concepts.recipe["mixed_precision"] == "bf16"
    lora = {n: p for n, p in fresh_model.unet.named_parameters() if "lora_" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert fresh_model.text_encoder.get_input_embeddings().weight.dtype == torch.float32
    assert all(torch.isfinite(torch.tensor(v)) for v in concepts.losses)
    assert any(torch.count_nonzero(v) for k, v in concepts.lora.items() if "lora_B" in k)  # B moved from 0


def test_the_lora_takes_its_own_learning_rate_and_the_tokens_theirs(sample):
    """lora_learning_rate moves the LoRA alone: at a rate 10^6 times smaller, B barely leaves zero while
    the placeholder rows move exactly as with the shared rate."""
    shared = learn_concepts(load_model("tiny"), sample, _params(3))
    apart = learn_concepts(load_model("tiny"), sample, _params(3, lora_learning_rate=3e-9))
    b_shared = max(float(v.abs().max()) for k, v in shared.lora.items() if "lora_B" in k)
    b_apart = max(float(v.abs().max()) for k, v in apart.lora.items() if "lora_B" in k)
    assert b_shared > 1e-3 and b_apart < 1e-7
    assert set(apart.embeddings) == set(shared.embeddings)
    # B starts at 0, so the first step's row update cannot depend on the LoRA's rate.
    first_shared = learn_concepts(load_model("tiny"), sample, _params(1))
    first_apart = learn_concepts(load_model("tiny"), sample, _params(1, lora_learning_rate=3e-9))
    assert all(
        torch.equal(first_shared.embeddings[t], first_apart.embeddings[t]) for t in first_apart.embeddings
    )


def test_clipping_covers_the_lora_only_not_the_placeholder_rows(sample):
    """With a clip far below the gradient norm, clipped rows would barely move (their gradient falls
    under AdamW's eps); the published scripts clip the LoRA only, so the rows move ~lr per step."""
    model = load_model("tiny")
    start = learn_concepts(model, sample, _params(0))
    moved = learn_concepts(load_model("tiny"), sample, _params(1, grad_clip=1e-12, learning_rate=1e-2))
    token = start.tokens[sample.classes[0].name][0]
    assert float((moved.embeddings[token] - start.embeddings[token]).abs().max()) > 5e-3
    lora_moved = max(float(v.abs().max()) for k, v in moved.lora.items() if "lora_B" in k)
    assert lora_moved < 1e-3  # the LoRA's step was clipped to nothing


def test_placeholder_init_can_be_random_and_is_recorded(sample, fresh_model):
    concepts = learn_concepts(fresh_model, sample, _params(0, placeholder_init="random"))
    rows = [concepts.embeddings[t[0]] for t in concepts.tokens.values()]
    assert concepts.recipe["placeholder_init"] == "random"
    assert not torch.allclose(rows[0], rows[1])


def _item(name: str, index: int, image) -> ImageItem:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ImageItem(name, f"{name}/{index}.png", buffer.getvalue(), image.width, image.height)


def test_long_tailed_data_is_sampled_class_balanced():
    assert class_balanced([100, 5], "auto") and not class_balanced([20, 5], "auto")
    assert class_balanced([20, 5], "balanced") and not class_balanced([100, 5], "uniform")
    sizes = [200, 10]
    draws = {True: [0, 0], False: [0, 0]}
    for balanced in (True, False):
        views = iter(ViewSampler(sizes, balanced, 50, torch.Generator().manual_seed(0)))
        for _ in range(20):
            for index, *_ in next(views):
                draws[balanced][0 if index < sizes[0] else 1] += 1
    assert 400 <= draws[True][1] <= 600  # half the draws for the tail class
    assert draws[False][1] < 100  # uniform over images: ~1/21


def test_training_decodes_only_the_images_each_batch_needs(sample, fresh_model):
    """No image is held decoded for the whole run: a step opens exactly the images of its batch."""
    opened = []
    classes = []
    for c in sample.classes:
        items = []
        for item in c.images:
            wrapped = _item(c.name, len(items), item.open())
            original = wrapped.open
            wrapped.open = lambda original=original: opened.append(1) or original()  # type: ignore[method-assign]
            items.append(wrapped)
        classes.append(ClassInfo(c.name, c.index, items))
    counted = Dataset(classes, [])
    learn_concepts(fresh_model, counted, _params(2, batch_size=2, gradient_accumulation=1))
    assert len(opened) == 4 < 2 * counted.images


def test_da_fusion_learns_tokens_only_with_its_token_count(sample, fresh_model, tmp_path):
    params = JobParams(method="da-fusion", seed=1, concepts={"steps": 2, "learning_rate": 1e-3})
    assert params.concepts.tokens_per_class == 4
    concepts = learn_concepts(fresh_model, sample, params)
    assert concepts.kind == "tokens" and concepts.lora == {} and concepts.lora_rank == 0
    assert all(len(t) == 4 for t in concepts.tokens.values())
    assert not any(p.requires_grad for p in fresh_model.unet.parameters())
    concepts.save(tmp_path / "tokens")
    with pytest.raises(ArtifactError, match="tokens; this method needs lora"):  # the loader checks the fit
        steps.load_concepts(METHODS["diff-ii"], tmp_path / "tokens", concepts.class_names, params)
    with pytest.raises(ArtifactError, match="holds no learned concepts"):
        steps.load_concepts(METHODS["da-fusion"], tmp_path, concepts.class_names, params)


def test_concepts_do_not_depend_on_the_threads_the_process_was_left_with(sample):
    """On CPU the thread count changes the last bits of the gradients; learning holds its own count,
    so a worker sharing the CPUs with other task processes learns what `diffii augment` learns."""
    params = _params(4, batch_size=4)
    before = torch.get_num_threads()
    learned = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            learned.append(learn_concepts(load_model("tiny"), sample, params).fingerprint)
            assert torch.get_num_threads() == threads  # restored after learning
    finally:
        torch.set_num_threads(before)
    assert learned[0] == learned[1]
