"""Fixtures for the engine's tests: the tiny model and the bundled sample dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from diffii_core.dataset import Dataset, load_dataset
from diffii_core.learning.concepts import Concepts, concepts_applied
from diffii_core.learning.training import learn_concepts
from diffii_core.models import LoadedModel, load_model
from diffii_core.params import ConceptParams, JobParams
from diffii_core.sample_data import write_sample_dataset


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("sample") / "data")


@pytest.fixture(scope="session")
def sample(sample_dir: Path) -> Dataset:
    return load_dataset(sample_dir)


@pytest.fixture
def fresh_model() -> LoadedModel:
    """A model no other test has touched (concept learning installs adapters and token rows)."""
    return load_model("tiny")


@pytest.fixture(scope="session")
def fast_params() -> JobParams:
    return JobParams(
        seed=7,
        inference_steps=8,
        inversion_steps=8,
        expansion=2,
        concepts=ConceptParams(steps=6, learning_rate=1e-3, lora_rank=4),
    )


@pytest.fixture(scope="session")
def trained(sample: Dataset, fast_params: JobParams) -> Iterator[tuple[LoadedModel, Concepts]]:
    """One model with concepts learned on the sample data, in their scope, shared by read-only tests."""
    model = load_model("tiny")
    concepts = learn_concepts(model, sample, fast_params)
    with concepts_applied(model, concepts):
        yield model, concepts
