"""Inversion pools and two-stage generation on the tiny model."""

import pytest
import torch
from pydantic import ValidationError

from diffii_core.inversion.invert import invert_class, load_pool, save_pool
from diffii_core.methods import METHODS
from diffii_core.params import JobParams
from diffii_core.pipeline import steps
from diffii_core.pipeline.generate import generate_share


def _share(model, concepts, pool, cls, params, batch_size, start=0, stop=6):
    return list(
        generate_share(
            model,
            concepts,
            pool,
            class_name=cls.name,
            label_index=cls.index,
            class_names=[cls.name],
            source_names=[i.path for i in cls.images],
            params=params,
            start=start,
            stop=stop,
            batch_size=batch_size,
        )
    )


def test_same_seed_gives_identical_bytes_for_batch_sizes_1_and_4(trained, sample, fast_params):
    model, concepts = trained
    cls = sample.classes[0]
    pool = invert_class(model, concepts, [i.open() for i in cls.images], cls.name, fast_params, batch_size=4)
    one = _share(model, concepts, pool, cls, fast_params, batch_size=1)
    four = _share(model, concepts, pool, cls, fast_params, batch_size=4)
    assert [g.png for g in one] == [g.png for g in four]
    assert [g.metadata for g in one] == [g.metadata for g in four]
    # A shard of the same class that starts mid-way makes the same images for its indices.
    tail = _share(model, concepts, pool, cls, fast_params, batch_size=3, start=3, stop=6)
    assert [g.png for g in tail] == [g.png for g in four[3:]]
    assert len({g.png for g in four}) == len(four)  # every image differs from the others


def test_another_seed_gives_other_images(trained, sample, fast_params):
    model, concepts = trained
    cls = sample.classes[0]
    pool = invert_class(model, concepts, [i.open() for i in cls.images], cls.name, fast_params)
    other = fast_params.model_copy(update={"seed": fast_params.seed + 1})
    a = _share(model, concepts, pool, cls, fast_params, batch_size=4, stop=3)
    b = _share(model, concepts, pool, cls, other, batch_size=4, stop=3)
    assert all(x.png != y.png for x, y in zip(a, b, strict=True))


def test_inversion_pool_is_batch_independent_and_round_trips(trained, sample, fast_params, tmp_path):
    model, concepts = trained
    cls = sample.classes[0]
    images = [i.open() for i in cls.images]
    pool1 = invert_class(model, concepts, images, cls.name, fast_params, batch_size=1)
    pool4 = invert_class(model, concepts, images, cls.name, fast_params, batch_size=4)
    assert pool1.shape == (len(images), 4, 8, 8)
    assert torch.equal(pool1, pool4)
    save_pool(pool4, tmp_path / "pool.safetensors")
    assert torch.equal(load_pool(tmp_path / "pool.safetensors"), pool4)


def test_single_image_class_starts_from_noise_and_metadata_says_so(trained, sample, fast_params):
    model, concepts = trained
    single = next(c for c in sample.classes if len(c.images) == 1)
    pool = invert_class(model, concepts, [single.images[0].open()], single.name, fast_params)
    images = _share(model, concepts, pool, single, fast_params, batch_size=2, stop=3)
    assert len(images) == 3 and len({g.png for g in images}) == 3
    assert all(g.metadata["init"] == "noise" and g.metadata["phi"] is None for g in images)


def test_suffixes_come_from_the_user_list(trained, sample, fast_params):
    model, concepts = trained
    cls = sample.classes[1]
    params = JobParams.model_validate(
        fast_params.model_dump() | {"suffixes": ["on a red carpet", "under water"], "split_ratio": 1.0}
    )
    pool = invert_class(model, concepts, [i.open() for i in cls.images], cls.name, params)
    images = _share(model, concepts, pool, cls, params, batch_size=4, stop=8)
    assert {g.metadata["suffix"] for g in images} <= {"on a red carpet", "under water"}
    assert all(g.metadata["split_ratio"] == 1.0 for g in images)
    pairs = [tuple(g.metadata["sources"]) for g in images]
    assert all(a != b for a, b in pairs)  # interpolation pairs are distinct images of the class


def test_a_filled_pool_gives_the_one_image_class_borrowed_partners(trained, sample, fast_params):
    model, concepts = trained
    params = fast_params.model_copy(update={"fill_pool_to": 3})
    plans = steps.prepare(sample, params)
    single = next(p for p in plans if p.images == 1)
    assert len(single.borrowed) == 2 and not any(b.startswith(f"{single.name}/") for b in single.borrowed)
    assert steps.prepare(sample, params) == plans  # the job seed alone picks them
    assert all(p.borrowed == [] for p in plans if p.images >= 3)

    pool = steps.invert(METHODS["diff-ii"], model, concepts, sample, single, params, batch_size=2)
    assert pool is not None and pool.shape[0] == 3
    alone = invert_class(
        model, concepts, [sample.classes[single.index].images[0].open()], single.name, params
    )
    assert torch.equal(pool[:1], alone)  # the class's own inversion comes first, unchanged

    names = [p.name for p in plans]

    def make(batch_size: int) -> list:
        return list(
            steps.generate(
                model, params, single, names, start=0, stop=4, batch_size=batch_size, concepts=concepts,
                pool=pool,
            )
        )  # fmt: skip

    one, four = make(1), make(4)
    assert [g.png for g in one] == [g.png for g in four] and len({g.png for g in one}) == 4
    for image in one:
        own, partner = image.metadata["sources"]
        assert image.metadata["init"] == "interpolation with a borrowed image"
        assert own == single.sources[0] and partner in single.borrowed


def test_a_filled_pool_leaves_classes_with_enough_images_alone(trained, sample, fast_params):
    model, concepts = trained
    filled = fast_params.model_copy(update={"fill_pool_to": 3})
    outputs = []
    for params in (fast_params, filled):
        plan = next(p for p in steps.prepare(sample, params) if p.images == 3)
        pool = steps.invert(METHODS["diff-ii"], model, concepts, sample, plan, params, batch_size=4)
        made = steps.generate(model, params, plan, sample.class_names(), start=0, stop=3, batch_size=3,
                              concepts=concepts, pool=pool)  # fmt: skip
        outputs.append([g.png for g in made])
    assert outputs[0] == outputs[1]


def test_fill_pool_to_is_refused_where_there_is_no_inversion_pool():
    with pytest.raises(ValidationError, match="diff-mix has no inversion pool: fill_pool_to"):
        JobParams(method="diff-mix", fill_pool_to=3)
    assert JobParams(method="diff-ii", fill_pool_to=3).fill_pool_to == 3
