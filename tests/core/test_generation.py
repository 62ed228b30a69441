"""Inversion pools and two-stage generation on the tiny model."""

import torch

from diffii_core.denoising.generate import generate_share
from diffii_core.inversion.invert import invert_class, load_pool, save_pool
from diffii_core.params import JobParams


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
