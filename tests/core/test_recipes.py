"""The published recipes: presets, samplers, inversion schedule, image geometry, readable class names,
Real-Filter, importing the published Diff-Mix artefacts, and the one method registry."""

from __future__ import annotations

import importlib
import io
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from diffusers import DDIMInverseScheduler
from PIL import Image
from safetensors.torch import save_file

from diffii_core.denoising.prompts import readable_name
from diffii_core.errors import ArtifactError
from diffii_core.images import fit_square
from diffii_core.inversion.invert import schedule_for
from diffii_core.learning.concepts import Concepts, concepts_applied
from diffii_core.methods import METHODS
from diffii_core.methods.real_filter import fit_real_filter, image_features
from diffii_core.models.tiny import SCHEDULER_CONFIG
from diffii_core.params import ConceptParams, JobParams
from diffii_core.pipeline.augment import augment
from diffii_core.pipeline.generate import generate_share

from .test_augment_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]


def _read(archive: Path) -> list[dict]:
    with zipfile.ZipFile(archive) as zf:
        return [json.loads(x) for x in zf.read("metadata.jsonl").decode().splitlines()]


def _fast(method: str, **extra) -> JobParams:
    base = {"method": method, "seed": 2, "inference_steps": 3, "inversion_steps": 3, "expansion": 1}
    return JobParams.model_validate(base | {"concepts": ConceptParams(steps=2, lora_rank=4)} | extra)


# -- presets and defaults -------------------------------------------------------------------------------


def test_real_models_default_to_the_published_recipe_and_tiny_to_the_quick_one():
    real = JobParams(model="sd15")
    assert real.preset == "published" and real.concepts.steps == 35_000
    assert real.concepts.batch_size * real.concepts.gradient_accumulation == 8
    assert real.inversion_steps == 200 and real.inversion_schedule == "published"
    quick = JobParams()
    assert quick.preset == "quick" and quick.concepts.steps == 1000 and quick.inversion_steps == 50
    assert quick.concepts.gradient_accumulation == 1
    trial = JobParams(model="sd15", preset="quick", concepts={"steps": 10})
    assert trial.concepts.steps == 10 and trial.inversion_steps == 50
    again = JobParams.model_validate(real.model_dump())  # a stored job reads back the same
    assert again == real


def test_the_world_model_has_its_own_quick_concept_recipe_and_explicit_values_win():
    world = JobParams(model="world")
    assert world.preset == "quick" and world.concepts.steps == 1000 and world.concepts.batch_size == 8
    assert (world.concepts.learning_rate, world.concepts.lora_learning_rate) == (5e-3, 1e-4)
    # The model's token count is over the one-token default of the Diff-Mix family, not over a
    # method's own published count (DA-Fusion's 4); a job's is over both.
    assert world.concepts.tokens_per_class == 8
    assert JobParams(model="world", method="diff-mix").concepts.tokens_per_class == 8
    assert JobParams(model="world", method="da-fusion").concepts.tokens_per_class == 4
    asked = JobParams(model="world", method="da-fusion", concepts={"tokens_per_class": 8})
    assert asked.concepts.tokens_per_class == 8
    assert JobParams(model="world", concepts={"tokens_per_class": 2}).concepts.tokens_per_class == 2
    assert JobParams(model="tiny", method="da-fusion").concepts.tokens_per_class == 4
    mine = JobParams(model="world", concepts={"learning_rate": 1e-3, "steps": 50})
    assert (mine.concepts.learning_rate, mine.concepts.steps, mine.concepts.lora_learning_rate) == (
        1e-3,
        50,
        1e-4,
    )
    published = JobParams(model="world", preset="published")
    assert published.concepts.steps == 35_000 and published.concepts.lora_learning_rate is None
    assert JobParams(model="tiny").concepts.lora_learning_rate is None  # one rate, as published
    # A stored job reads back alike.
    assert JobParams.model_validate(world.model_dump()) == world


def test_baselines_default_to_dpm_solver_and_diff_ii_to_ddim():
    assert JobParams(method="diff-ii").sampler == "ddim"
    for method in METHODS:
        if method != "diff-ii":
            assert JobParams(method=method).sampler == "dpm-solver++", method
    assert JobParams(method="diff-mix", sampler="ddim").sampler == "ddim"


def test_published_inversion_schedule_is_diffusers_inverse_ddim():
    class Model:
        scheduler_config = SCHEDULER_CONFIG

    params = JobParams(model="sd15")
    steps = schedule_for(Model(), params)  # type: ignore[arg-type]
    inverse = DDIMInverseScheduler.from_config(SCHEDULER_CONFIG)
    inverse.set_timesteps(200)
    assert steps == [int(t) for t in inverse.timesteps] and steps[-1] == 996 and len(steps) == 200
    matched = schedule_for(Model(), JobParams(inversion_steps=50))  # type: ignore[arg-type]
    assert matched[-1] == 961 and len(matched) == 50  # the quick preset ends where denoising starts


# -- image handling -------------------------------------------------------------------------------------


def _wide() -> Image.Image:
    image = Image.new("RGB", (128, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 64))  # a red "tail" at the left edge
    return image


def test_squash_keeps_the_whole_subject_where_crop_cuts_it():
    squashed, cropped = fit_square(_wide(), 32), fit_square(_wide(), 32, "crop")
    assert squashed.size == cropped.size == (32, 32)
    assert squashed.getpixel((1, 16))[0] > 200  # the tail is still there
    assert cropped.getpixel((1, 16))[0] < 50  # cut off by the centre crop


def test_img2img_outputs_keep_the_true_source_aspect(trained, sample):
    model, concepts = trained
    params = _fast("diff-aug", strength=[0.5])
    cls = sample.classes[0]
    images = list(
        generate_share(
            model, concepts, None, class_name=cls.name, label_index=cls.index,
            class_names=sample.class_names(), source_names=["wide.png"], params=params, start=0, stop=2,
            references=[_wide()],
        )
    )  # fmt: skip
    assert {Image.open(io.BytesIO(g.png)).size for g in images} == {(128, 64)}


# -- class names in prompts -----------------------------------------------------------------------------


def test_readable_names_drop_number_prefixes_and_underscores():
    assert readable_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert readable_name("12 - Boeing_747") == "Boeing 747"
    assert readable_name("星 star") == "星 star"
    assert readable_name("747") == "747"  # nothing but a number: kept


@pytest.fixture(scope="module")
def cub_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cub") / "data"
    for k, name in enumerate(["001.Black_footed_Albatross", "002.Laysan_Albatross"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 48), (40 + 100 * k, 20 * i, 90)).save(root / name / f"{i}.png")
    return root


def test_base_model_prompts_use_readable_or_given_names_and_record_them(cub_like, tmp_path):
    augment(cub_like, tmp_path / "a.zip", _fast("real-guidance", metaclass="bird"), batch_size=2)
    prompts = {line["source_class"]: line["prompt"] for line in _read(tmp_path / "a.zip")}
    assert prompts["001.Black_footed_Albatross"] == "a photo of a Black footed Albatross bird"
    names = {"002.Laysan_Albatross": "Laysan albatross"}
    augment(cub_like, tmp_path / "b.zip", _fast("real-guidance", metaclass="bird", class_prompts=names))
    prompts = {line["source_class"]: line["prompt"] for line in _read(tmp_path / "b.zip")}
    assert prompts["002.Laysan_Albatross"] == "a photo of a Laysan albatross bird"


def test_cli_reads_class_names_and_suffix_files(cub_like, tmp_path):
    (tmp_path / "classes.json").write_text(json.dumps({"001.Black_footed_Albatross": "albatross"}))
    (tmp_path / "suffixes.txt").write_text("flying over water\n# a comment\n\nperched on a rock\n")
    out = tmp_path / "c.zip"
    run_cli(
        "augment", cub_like, "--out", out, "--method", "diff-ii", "--class-names", tmp_path / "classes.json",
        "--suffixes-file", tmp_path / "suffixes.txt", "--split-ratio", "1", "--expansion", "2",
        "--concept-steps", "1", "--inference-steps", "2", "--inversion-steps", "2", "--lora-rank", "2",
    )  # fmt: skip
    with zipfile.ZipFile(out) as zf:
        params = json.loads(zf.read("job.json"))["params"]
    assert params["suffixes"] == ["flying over water", "perched on a rock"]
    assert params["class_prompts"] == {"001.Black_footed_Albatross": "albatross"}
    assert {line["suffix"] for line in _read(out)} <= set(params["suffixes"])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = run_cli("augment", cub_like, "--out", tmp_path / "x.zip", "--class-names", bad, ok=False)
    assert result.returncode != 0 and "must map class folder names" in result.stderr


# -- Real-Filter ----------------------------------------------------------------------------------------


def test_real_filter_scores_with_a_classifier_of_the_real_set(sample_dir, sample, tmp_path):
    from diffii_core.models import load_model

    model = load_model("tiny")
    images = [[i.open() for i in c.images] for c in sample.classes]
    classifier = fit_real_filter(model, images, 64, "squash")
    probs = classifier.probabilities(image_features(model, [im for c in images for im in c], 64, "squash"))
    labels = torch.tensor([k for k, c in enumerate(images) for _ in c])
    assert float((probs.argmax(1) == labels).float().mean()) >= 0.75  # it learned the real set
    alone = classifier.probabilities(image_features(model, images[0][:1], 64, "squash"))
    assert torch.equal(alone[0], probs[0])  # a score does not depend on what else was scored

    augment(sample_dir, tmp_path / "f.zip", _fast("real-filter", filter_attempts=2), batch_size=3)
    lines = _read(tmp_path / "f.zip")
    assert len(lines) == sample.images
    for line in lines:
        assert 0 <= line["filter_score"] <= 1 and 1 <= line["filter_attempts"] <= 2
        assert line["filter_passed"] or line["filter_attempts"] == 2
    augment(sample_dir, tmp_path / "g.zip", _fast("real-filter", filter_attempts=2), batch_size=1)
    with zipfile.ZipFile(tmp_path / "f.zip") as a, zipfile.ZipFile(tmp_path / "g.zip") as b:
        pngs = [n for n in a.namelist() if n.endswith(".png")]
        assert all(a.read(n) == b.read(n) for n in pngs)  # batch size changes nothing


def test_real_filter_without_a_classifier_is_refused(sample):
    from diffii_core.models import load_model

    model = load_model("tiny")
    cls = sample.classes[0]
    with concepts_applied(model, None), pytest.raises(ValueError, match="classifier"):
        list(
            generate_share(
                model, None, None, class_name=cls.name, label_index=0, class_names=sample.class_names(),
                source_names=["a"], params=_fast("real-filter"), start=0, stop=1,
                references=[cls.images[0].open()],
            )
        )  # fmt: skip


# -- importing published artefacts ----------------------------------------------------------------------


def _published_copy(concepts: Concepts, folder: Path, names: dict[str, str]) -> Path:
    """Our concepts written as the published Diff-Mix code writes them (old diffusers LoRA key names)."""
    folder.mkdir(parents=True, exist_ok=True)
    embeds = {f"<{names[c].replace(' ', '_')}>": concepts.embeddings[concepts.tokens[c][0]] for c in names}
    torch.save(embeds, folder / "learned_embeds-steps-last.bin")

    def old_name(m: re.Match) -> str:
        return f".processor.{m.group(1).removesuffix('.0')}_lora.{'down' if m.group(2) == 'A' else 'up'}."

    pattern = r"\.(to_q|to_k|to_v|to_out\.0)\.lora_([AB])\."
    lora = {f"unet.{re.sub(pattern, old_name, k)}": v for k, v in concepts.lora.items()}
    assert all(".processor." in k for k in lora)
    save_file(lora, str(folder / "pytorch_lora_weights.safetensors"))
    return folder


def test_published_concepts_import_and_make_the_same_images(trained, sample, sample_dir, tmp_path):
    _, concepts = trained
    names = {c: c.replace("dé", "de") for c in concepts.class_names}
    published = _published_copy(concepts, tmp_path / "published", names)
    params = _fast("diff-gen")
    ours = tmp_path / "ours"
    concepts.save(ours)
    augment(sample_dir, tmp_path / "a.zip", params, concepts_dir=ours, batch_size=2)
    mapping = {c: names[c] for c in concepts.class_names}
    augment(
        sample_dir, tmp_path / "b.zip", params.model_copy(update={"class_prompts": mapping}),
        concepts_dir=published, batch_size=2,
    )  # fmt: skip
    with zipfile.ZipFile(tmp_path / "a.zip") as a, zipfile.ZipFile(tmp_path / "b.zip") as b:
        pngs = sorted(n for n in a.namelist() if n.endswith(".png"))
        assert pngs and all(a.read(n) == b.read(n) for n in pngs)


def test_published_concepts_of_other_classes_or_models_are_refused(trained, sample_dir, tmp_path):
    _, concepts = trained
    names = {c: c for c in concepts.class_names[:-1]}  # one class missing
    partial = _published_copy(concepts, tmp_path / "partial", names)
    with pytest.raises(ArtifactError, match="no embedding for classes"):
        augment(sample_dir, tmp_path / "x.zip", _fast("diff-gen"), concepts_dir=partial)
    other = tmp_path / "other"
    _published_copy(concepts, other, {c: c for c in concepts.class_names})
    torch.save({f"<{c.replace(' ', '_')}>": torch.zeros(768) for c in concepts.class_names},
               other / "learned_embeds-steps-last.bin")  # fmt: skip
    with pytest.raises(ArtifactError, match="another base model"):
        augment(sample_dir, tmp_path / "y.zip", _fast("diff-gen"), concepts_dir=other)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()


# -- the registry ---------------------------------------------------------------------------------------


def test_every_method_has_one_module_and_one_entry():
    # One module per method, holding its registry entry (and its code, where it has code of its own).
    shared = {"__init__", "spec", "img2img"}  # the registry, its types, the img2img methods' sampler
    files = {p.stem for p in (ROOT / "diffii_core" / "methods").glob("*.py")} - shared
    assert {m.replace("-", "_") for m in METHODS} == files
    for name, spec in METHODS.items():
        module = importlib.import_module(f"diffii_core.methods.{name.replace('-', '_')}")
        assert spec.name == name and module.SPEC is spec
    assert "real-filter" in JobParams.model_json_schema()["properties"]["method"]["enum"]


@pytest.mark.parametrize(
    ("bad", "field"),
    [({"model": [1]}, "model"), ({"method": [1]}, "method"), ({"preset": "fast"}, "preset"),
     ({"method": "nope"}, "method"), ({"sampler": "euler"}, "sampler"),
     ({"image_geometry": "pad"}, "image_geometry"),
     ({"class_prompts": {"a": " "}}, "class_prompts"), ({"concepts": {"sampling": "x"}}, "sampling")],
)  # fmt: skip
def test_bad_recipe_parameters_are_refused_by_name(bad, field):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        JobParams.model_validate(bad)
    assert field in str(info.value)
