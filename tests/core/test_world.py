"""The diffii world: the domain's determinism and split, datasets, training legs, the shipped model and
the oracle."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from diffii_core.denoising.suffixes import DEFAULT_SUFFIXES
from diffii_core.model_registry import WORLD_MODEL_DIR, shipped_world_model
from diffii_core.world import domain
from diffii_core.world.datasets import WorldDatasetSpec, long_tail_counts, pick_classes, write_world_dataset


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_image_other_seed_other_image() -> None:
    species = domain.evaluation_species()[3]
    a, ctx_a = domain.sample_image(species, domain.image_rng(5, 1, 2))
    b, ctx_b = domain.sample_image(species, domain.image_rng(5, 1, 2))
    c, _ = domain.sample_image(species, domain.image_rng(6, 1, 2))
    assert _png(a) == _png(b) and ctx_a == ctx_b
    assert _png(a) != _png(c)
    assert a.size == (domain.RESOLUTION, domain.RESOLUTION) and a.mode == "RGB"


def test_species_split_is_disjoint_complete_and_keeps_every_word_in_pretraining() -> None:
    pre, held = domain.species_split()
    assert {s.index for s in pre}.isdisjoint({s.index for s in held})
    assert len(pre) + len(held) == len(domain.all_species()) == 6 * 4 * 3 * 3
    for attribute, values in domain.ATTRIBUTES.items():
        assert {s.attributes[attribute] for s in pre} == set(values)
    # Every evaluation species has a near neighbour (one or two attributes apart) among them.
    assert all(any(0 < s.distance(o) <= 2 for o in held) for s in held)


def test_contexts_are_the_default_bird_suffixes() -> None:
    assert list(domain.CONTEXTS) == DEFAULT_SUFFIXES["bird"]


CAPTION = re.compile(
    r"a photo of a (\w+) bird with (\w+) wings, (?:no crest|a (\w+) crest) and a (\w+) tail, (.+)"
)


@pytest.mark.parametrize("species", domain.all_species()[::17])
def test_caption_names_exactly_the_drawn_attributes_and_context(species: domain.Species) -> None:
    from diffii_core.world.model import UNK, build_tokenizer

    tokenizer = build_tokenizer()
    for context in range(len(domain.CONTEXTS)):
        text = domain.caption(species, context)
        body, wing, crest, tail, where = CAPTION.fullmatch(text).groups()
        assert {"body": body, "wing": wing, "crest": crest or "no", "tail": tail} == species.attributes
        assert where == domain.CONTEXTS[context]
        ids = tokenizer(text).input_ids
        assert tokenizer.convert_tokens_to_ids(UNK) not in ids and len(ids) <= tokenizer.model_max_length


def test_class_folders_read_as_the_captions_do() -> None:
    """Methods that prompt the base model with a class's readable folder name (real-guidance,
    real-mix) give the world model the words its captions taught it, as CUB's names do SD."""
    from diffii_core.denoising.prompts import name_prompt, readable_name
    from diffii_core.world.model import UNK, build_tokenizer

    tokenizer = build_tokenizer()
    species = domain.all_species()
    assert len({s.name for s in species}) == len(species)
    shipped = json.loads((WORLD_MODEL_DIR / "tokenizer/tokenizer.json").read_text())
    assert set(tokenizer.get_vocab()) == set(shipped["model"]["vocab"])
    for s in species[::7]:
        name = readable_name(s.name)
        assert name.split() == re.findall(r"\w+", s.description())
        ids = tokenizer(name_prompt(name, domain.METACLASS)).input_ids
        assert tokenizer.convert_tokens_to_ids(UNK) not in ids
        assert domain.species_by_name(s.name) == s


def test_pick_classes_is_fine_grained_and_seeded() -> None:
    a, b = pick_classes(8, seed=3), pick_classes(8, seed=3)
    assert a == b and len(set(a)) == 8
    assert set(a) <= set(domain.evaluation_species())
    assert all(min(s.distance(o) for o in a if o != s) <= 2 for s in a)
    assert pick_classes(8, seed=4) != a


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_dataset_counts_layout_and_determinism(tmp_path: Path) -> None:
    spec = WorldDatasetSpec(classes=4, shots=3, seed=1, test_per_class=5)
    body = write_world_dataset(tmp_path / "a", spec)
    write_world_dataset(tmp_path / "b", spec)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    names = [c["name"] for c in body["classes"]]
    for split, n in (("train", 3), ("test", 5)):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == sorted(names)
        assert all(len(list((tmp_path / "a" / split / name).iterdir())) == n for name in names)
    backgrounds = json.loads((tmp_path / "a" / "backgrounds.json").read_text())
    assert len(backgrounds) == 4 * (3 + 5)
    with pytest.raises(FileExistsError):
        write_world_dataset(tmp_path / "a", spec)


def test_dataset_loads_with_the_augment_reader(tmp_path: Path) -> None:
    from diffii_core.dataset import DatasetLimits, load_dataset

    write_world_dataset(tmp_path, WorldDatasetSpec(classes=3, shots=2, seed=0, test_per_class=1))
    data = load_dataset(tmp_path / "train", DatasetLimits())
    assert len(data.classes) == 3 and data.images == 6 and not data.skipped


def test_long_tail_counts_fall_from_shots_to_shots_over_r(tmp_path: Path) -> None:
    assert long_tail_counts(5, 100, 10) == [100, 56, 32, 18, 10]
    assert long_tail_counts(4, 10, 100)[-1] == 1  # never an empty class
    body = write_world_dataset(
        tmp_path, WorldDatasetSpec(classes=5, shots=20, imbalance=10, test_per_class=2)
    )
    counts = [c["train_images"] for c in body["classes"]]
    assert counts == long_tail_counts(5, 20, 10)
    assert [len(list((tmp_path / "train" / c["name"]).iterdir())) for c in body["classes"]] == counts


def test_waterbirds_training_correlates_with_background_and_test_is_balanced(tmp_path: Path) -> None:
    body = write_world_dataset(
        tmp_path, WorldDatasetSpec(classes=4, shots=150, waterbirds=0.9, test_per_class=20)
    )
    groups = {c["name"]: c["group"] for c in body["classes"]}
    assert sorted(groups.values()) == ["land", "land", "water", "water"]
    backgrounds = json.loads((tmp_path / "backgrounds.json").read_text())
    own = Counter()
    test_water = Counter()
    for rel, context in backgrounds.items():
        split, name, _ = rel.split("/")
        on_water = context in domain.WATER_CONTEXTS
        if split == "train":
            own[name] += on_water == (groups[name] == "water")
        else:
            test_water[name] += on_water
    assert all(0.83 <= own[name] / 150 <= 0.97 for name in groups), own
    assert all(test_water[name] == 10 for name in groups)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 1}, "classes must be between 2"),
        ({"classes": 999}, "classes must be between 2"),
        ({"shots": 0}, "shots must be >= 1"),
        ({"imbalance": 0.5}, "imbalance must be >= 1"),
        ({"waterbirds": 0.2}, "waterbirds must be in"),
        ({"imbalance": 10, "waterbirds": 0.9}, "choose one"),
    ],
)
def test_bad_dataset_specs_are_refused_with_nothing_written(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_world_dataset(tmp_path / "out", WorldDatasetSpec(**kwargs))
    assert not (tmp_path / "out").exists()


def test_training_legs_resume_to_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    from diffii_core.world.train import Recipe, train_unet, train_vae

    recipe = Recipe(
        vae_batch=2,
        unet_batch=2,
        data_images=16,
        vae_stats_images=16,
        checkpoint_every=1,
        unet_warmup=2,
        vae_schedule_steps=3,
    )
    whole, legs = tmp_path / "whole", tmp_path / "legs"
    for d in (whole, legs):
        d.mkdir()
    assert train_vae(whole, recipe, 3) == 3
    assert train_vae(legs, recipe, 2) == 2
    assert train_vae(legs, recipe, 3) == 3
    assert train_unet(whole, recipe, 3) == 3
    assert train_unet(legs, recipe, 1) == 1
    assert train_unet(legs, recipe, 3) == 3
    for name in ("vae.pt", "unet.pt"):
        a = torch.load(whole / name, weights_only=False)
        b = torch.load(legs / name, weights_only=False)
        keys = ("vae",) if name == "vae.pt" else ("unet", "text_encoder", "ema_unet")
        for key in keys:
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), f"{name}:{key} differs"
    # And training moved the weights at all.
    fresh = torch.load(whole / "unet.pt", weights_only=False)
    from diffii_core.world.model import build_fresh

    unet = build_fresh(recipe.seed)[2]
    assert any(not torch.equal(v, fresh["unet"][k]) for k, v in unet.state_dict().items())


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world model trained for one step of each stage and exported: real shape, untrained weights."""
    from diffii_core.world.train import Recipe, export, train_unet, train_vae

    work = tmp_path_factory.mktemp("world")
    recipe = Recipe(
        vae_batch=2, unet_batch=2, data_images=8, vae_stats_images=8, checkpoint_every=1, unet_warmup=1
    )
    train_vae(work, recipe, 1)
    train_unet(work, recipe, 1)
    manifest = export(work, recipe, work / "model")
    assert manifest["unet_steps"] == 1 and manifest["vae_steps"] == 1
    return work / "model"


def test_export_writes_a_directory_the_sd_loader_reads_with_matching_hashes(
    exported: Path, tmp_path: Path
) -> None:
    import shutil

    from diffii_core.models import load_model
    from diffii_core.world.train import verify_manifest

    assert verify_manifest(exported) == []
    model = load_model("w", {"w": str(exported)}, device="cpu")
    assert model.resolution == domain.RESOLUTION and model.vae_scale == 2
    assert model.unet.dtype == torch.float32  # fp16 on disk, fp32 on a CPU
    copy = shutil.copytree(exported, tmp_path / "copy")
    (copy / "unet" / "config.json").write_text("{}")
    assert verify_manifest(copy) == ["unet/config.json"]


def test_world_check_runs_every_gate_through_the_engine(exported: Path) -> None:
    from diffii_core.world.check import TARGETS, run_checks

    said: list[str] = []
    report = run_checks(exported, samples=8, say=said.append, faithfulness=False)
    gates = set(TARGETS) - {"diffii_faithfulness"}
    assert gates <= set(report) and all(0.0 <= report[k] <= 1.0 for k in gates)
    assert report["oracle_accuracy"] >= 0.75  # real images: the oracle's own bar, on 8 of them
    assert report["images_per_second"] > 0 and len(said) >= 4
    assert set(report["met"]) == gates


def test_world_check_samples_at_the_guidance_it_is_given(exported: Path) -> None:
    from diffii_core.models import load_model
    from diffii_core.world.check import text_to_image

    model = load_model("world", {"world": str(exported)})
    prompts = [domain.caption(domain.pretraining_species()[0], 0)] * 2
    default = text_to_image(model, prompts, seed=0)
    assert (text_to_image(model, prompts, seed=0, guidance_scale=7.5) == default).all()
    assert (text_to_image(model, prompts, seed=0, guidance_scale=2.0) != default).any()


def test_centred_vae_latents_have_zero_mean_and_unit_spread(tmp_path: Path) -> None:
    from diffii_core.world.train import Recipe, centred_vae, render_batch, train_vae

    recipe = Recipe(vae_batch=2, vae_stats_images=256)
    train_vae(tmp_path, recipe, 1)
    vae = centred_vae(tmp_path, recipe)
    pixels, _ = render_batch(recipe.seed, "vae-stats", 0, 256)
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    assert z.mean(dim=(0, 2, 3)).abs().max() < 1e-3
    assert abs(float(z.std()) - 1.0) < 1e-2


def test_vae_report_measures_a_checkpoint_before_any_unet(tmp_path: Path) -> None:
    from diffii_core.world.check import vae_report
    from diffii_core.world.train import Recipe, train_vae

    train_vae(tmp_path, Recipe(vae_batch=2, vae_stats_images=8), 1)
    report = vae_report(tmp_path, samples=16)
    assert report["vae_steps"] == 1.0 and report["psnr_db"] > 0
    assert report["oracle_on_real"] >= 0.75  # the real images: the oracle's own bar, on 16 of them
    assert all(0.0 <= report[f"{a}_accuracy"] <= 1.0 for a in domain.ATTRIBUTES)
    with pytest.raises(FileNotFoundError):
        vae_report(tmp_path / "nothing")


def test_shipped_world_model_loads_through_the_sd_loader_and_matches_its_manifest() -> None:
    from diffii_core.models import load_model
    from diffii_core.world.train import verify_manifest

    assert verify_manifest(shipped_world_model()) == []
    model = load_model("world", device="cpu")
    assert model.resolution == domain.RESOLUTION
    size = sum(p.stat().st_size for p in shipped_world_model().rglob("*") if p.is_file())
    assert size <= 30 * 2**20


def test_shipped_oracle_gets_every_attribute_right_95_percent_on_a_fresh_seed() -> None:
    from diffii_core.world.oracle import evaluate_oracle, load_oracle

    # A seed the oracle never trained or was scored on; fixed, so the test cannot flake.
    report = evaluate_oracle(load_oracle(), seed=2026, count=600)
    assert report["all_attributes_accuracy"] >= 0.95, report


def test_sheet_labels_wrap_long_class_names_whole() -> None:
    from PIL import Image, ImageDraw, ImageFont

    from diffii_core.output.preview import _wrap

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    name = domain.all_species()[0].name
    lines = _wrap(draw, name, font, 150)
    assert len(lines) >= 2 and "".join(lines) == name
    assert all(draw.textlength(line, font=font) <= 150 for line in lines)
    assert _wrap(draw, "short", font, 150) == ["short"]
