"""GPU out of memory is not a failure: inversion and generation halve the batch and make the same
bytes; concept learning slices its micro-batch, keeps the effective batch and every draw, and says so.

The fault: the UNet raises torch.OutOfMemoryError (what CUDA raises) when a call has more rows than
`rows` (guided sampling runs two rows per image; a batch of one runs as two)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest
import torch

from diffii_core.inversion.invert import invert_class
from diffii_core.learning.training import learn_concepts
from diffii_core.models import LoadedModel
from diffii_core.params import ConceptParams
from diffii_core.pipeline.generate import generate_share


@contextlib.contextmanager
def unet_fits(model: LoadedModel, rows: int) -> Iterator[list[int]]:
    """The UNet runs out of memory above `rows` rows; yields the row counts it refused."""
    refused: list[int] = []
    inner = model.unet.forward

    def forward(sample: torch.Tensor, *args: object, **kwargs: object) -> object:
        if sample.shape[0] > rows:
            refused.append(sample.shape[0])
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected: {sample.shape[0]} rows > {rows})")
        return inner(sample, *args, **kwargs)

    model.unet.forward = forward
    try:
        yield refused
    finally:
        del model.unet.forward


def _share(model, concepts, pool, cls, params, batch_size):
    return list(
        generate_share(
            model, concepts, pool, class_name=cls.name, label_index=cls.index, class_names=[cls.name],
            source_names=[i.path for i in cls.images], params=params, start=0, stop=5, batch_size=batch_size,
        )
    )  # fmt: skip


def test_out_of_memory_halves_inversion_and_generation_batches_and_changes_no_byte(
    trained, sample, fast_params, caplog: pytest.LogCaptureFixture
) -> None:
    model, concepts = trained
    cls = sample.classes[0]
    images = [i.open() for i in cls.images]
    pool = invert_class(model, concepts, images, cls.name, fast_params, batch_size=4)
    expected = _share(model, concepts, pool, cls, fast_params, batch_size=4)
    caplog.set_level(logging.WARNING, logger="diffii.oom")
    with unet_fits(model, rows=2) as refused:
        tight_pool = invert_class(model, concepts, images, cls.name, fast_params, batch_size=4)
        tight = _share(model, concepts, tight_pool, cls, fast_params, batch_size=4)
    assert refused, "the fault never fired"
    assert torch.equal(tight_pool, pool)
    assert [g.png for g in tight] == [g.png for g in expected]
    assert [g.metadata for g in tight] == [g.metadata for g in expected]
    assert [g.index for g in tight] == list(range(5))  # none twice, none missing
    said = [r.getMessage() for r in caplog.records]
    assert any("inverting class" in m and "batches of 2 instead of 4" in m for m in said), said
    assert any("generating class" in m and "batches of 1 instead of 2" in m for m in said), said


def test_out_of_memory_with_a_single_image_is_a_real_failure(trained, sample, fast_params) -> None:
    model, concepts = trained
    cls = sample.classes[0]
    pool = invert_class(model, concepts, [i.open() for i in cls.images], cls.name, fast_params)
    with unet_fits(model, rows=1), pytest.raises(torch.OutOfMemoryError):
        _share(model, concepts, pool, cls, fast_params, batch_size=4)


def test_out_of_memory_in_learning_slices_the_micro_batch_and_keeps_the_effective_batch(
    sample, fast_params
) -> None:
    from diffii_core.models import load_model

    params = fast_params.model_copy(
        update={"concepts": ConceptParams(steps=3, learning_rate=1e-3, lora_rank=4, gradient_accumulation=2)}
    )
    plain = learn_concepts(load_model("tiny"), sample, params)
    model = load_model("tiny")
    with unet_fits(model, rows=1) as refused:
        tight = learn_concepts(model, sample, params)
    assert refused == [2]  # once: every later pass runs one image at a time
    assert tight.recipe["out_of_memory"] == "step 1: micro-batch 1 x 4 accumulated passes per step"
    assert tight.recipe["effective_batch"] == plain.recipe["effective_batch"] == "4"
    assert "out_of_memory" not in plain.recipe
    # The same images, noise and timesteps in slices: the same training up to float summation order.
    assert tight.losses == pytest.approx(plain.losses, rel=1e-4)
    for token, row in plain.embeddings.items():
        torch.testing.assert_close(tight.embeddings[token], row, rtol=1e-4, atol=1e-5)
    for name, weight in plain.lora.items():
        torch.testing.assert_close(tight.lora[name], weight, rtol=1e-4, atol=1e-5)
