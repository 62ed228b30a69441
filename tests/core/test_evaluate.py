"""`diffii evaluate`: the replacement protocol reaches the loss as specified, seeds reproduce, and bad
inputs get clear errors."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffii_core.errors import DatasetError
from diffii_core.evaluate.protocol import (
    Replacement,
    SyntheticPool,
    class_weights_long_tail,
    mix_batch,
    soft_cross_entropy,
)


def _pool() -> SyntheticPool:
    # Class 0 has two synthetic images (pixels 10, 11), class 1 one soft-labelled image (pixel 20),
    # class 2 none.
    pixels = torch.tensor([10.0, 11.0, 20.0]).view(3, 1, 1, 1).expand(3, 3, 2, 2).clone()
    targets = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.3, 0.7, 0]])
    return SyntheticPool(pixels, torch.tensor([0, 0, 1]), targets)


def test_replacement_probability_and_soft_labels_reach_the_loss_targets() -> None:
    real = torch.zeros(4000, 3, 2, 2)
    labels = torch.tensor([0, 1, 2, 1] * 1000)
    gen = torch.Generator().manual_seed(0)
    pixels, targets, replaced = mix_batch(real, labels, 3, _pool(), Replacement(0.25), [5, 5, 5], gen)
    # Only classes with synthetic images are replaced, at the rate asked for.
    assert not replaced[labels == 2].any()
    rate = replaced[labels != 2].float().mean()
    assert 0.22 < float(rate) < 0.28
    # A replaced sample carries the synthetic image and its label; the others stay real and one-hot.
    ones = replaced & (labels == 1)
    assert torch.all(pixels[ones] == 20.0) and torch.allclose(targets[ones], torch.tensor([0.3, 0.7, 0.0]))
    zeros = replaced & (labels == 0)
    assert set(pixels[zeros][:, 0, 0, 0].tolist()) == {10.0, 11.0}
    assert torch.all(pixels[~replaced] == 0.0)
    assert torch.equal(targets[~replaced], torch.nn.functional.one_hot(labels[~replaced], 3).float())


def test_soft_cross_entropy_is_the_expected_value_of_the_hard_losses() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    soft = soft_cross_entropy(logits, torch.tensor([[0.3, 0.7, 0.0]]))
    hard = [torch.nn.functional.cross_entropy(logits, torch.tensor([c])) for c in (0, 1)]
    assert torch.isclose(soft, 0.3 * hard[0] + 0.7 * hard[1])


def test_probability_zero_and_one_and_long_tail_draws() -> None:
    real, labels = torch.zeros(200, 3, 2, 2), torch.tensor([0, 1] * 100)
    gen = torch.Generator().manual_seed(1)
    _, _, none = mix_batch(real, labels, 3, _pool(), Replacement(0.0), [5, 5, 5], gen)
    _, _, all_ = mix_batch(real, labels, 3, _pool(), Replacement(1.0), [5, 5, 5], gen)
    assert not none.any() and all_.all()
    weights = class_weights_long_tail([99, 9, 0])
    assert torch.allclose(weights, torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64) / 1.11)
    # Long tail: the class is drawn by weight, not the real sample's own; class 2 has no pool, so
    # those draws stay real, and class 1 (weight 0.1 vs 0.01) is drawn ten times as often as class 0.
    big = torch.zeros(20000, 3, 2, 2)
    _, targets, replaced = mix_batch(
        big,
        torch.zeros(20000, dtype=torch.long),
        3,
        _pool(),
        Replacement(1.0, long_tail=True),
        [99, 9, 0],
        gen,
    )
    soft_rows = (targets[:, 1] > 0.5) & replaced
    zero_rows = (targets[:, 0] == 1.0) & replaced
    assert 7 < soft_rows.sum() / zero_rows.sum() < 13
    with pytest.raises(ValueError, match="probability"):
        Replacement(1.5)


# -- end to end on tiny data -------------------------------------------------------------------------


def _write_images(root: Path, classes: dict[str, int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for c, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            base = torch.full((8, 8, 3), 40.0 + 80.0 * c) + 20 * torch.rand((8, 8, 3), generator=g)
            Image.fromarray(base.clamp(0, 255).byte().numpy()).save(root / name / f"{i}.png")


def _archive(path: Path, class_names: list[str], per_class: int) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        lines = []
        for c, name in enumerate(class_names):
            for i in range(per_class):
                buf = io.BytesIO()
                Image.new("RGB", (8, 8), (40 + 80 * c,) * 3).save(buf, format="PNG")
                file_name = f"{name}/c{c}-{i}.png"
                zf.writestr(file_name, buf.getvalue())
                lines.append(
                    json.dumps({"file_name": file_name, "label": name, "label_index": c, "soft_label": None})
                )
        zf.writestr("metadata.jsonl", "\n".join(lines))
        classes = [{"index": c, "name": n} for c, n in enumerate(class_names)]
        zf.writestr("job.json", json.dumps({"params": {"method": "diff-ii"}, "classes": classes}))


@pytest.fixture()
def tiny_backbone(tmp_path: Path) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2
    )
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(tmp_path / "backbone")
    return tmp_path / "backbone"


def test_same_seeds_give_identical_accuracy_and_a_table(tmp_path: Path, tiny_backbone: Path) -> None:
    from diffii_core.evaluate.classifier import TrainConfig
    from diffii_core.evaluate.run import evaluate, format_table

    classes = {"a": 3, "b": 3}
    _write_images(tmp_path / "train", classes, 0)
    _write_images(tmp_path / "test", {"a": 4, "b": 4}, 1)
    _archive(tmp_path / "syn.zip", ["a", "b"], 3)
    config = TrainConfig(epochs=2, batch_size=4, resolution=8)
    runs = [
        evaluate(
            tmp_path / "train",
            tmp_path / "test",
            [tmp_path / "syn.zip"],
            backbone=tiny_backbone,
            seeds=2,
            config=config,
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    entries = runs[0]["entries"]
    assert [e["method"] for e in entries] == ["real only", "diff-ii"]
    assert entries[0]["gain"] == 0.0 and len(entries[1]["accuracies"]) == 2
    assert entries[1]["gain"] == pytest.approx(entries[1]["accuracy_mean"] - entries[0]["accuracy_mean"])
    assert "real only" in format_table(runs[0]) and "diff-ii" in format_table(runs[0])


def test_two_archives_of_one_method_are_told_apart_by_file_name(tmp_path: Path, tiny_backbone: Path) -> None:
    from diffii_core.evaluate.classifier import TrainConfig
    from diffii_core.evaluate.run import evaluate

    _write_images(tmp_path / "train", {"a": 2, "b": 2}, 0)
    _write_images(tmp_path / "test", {"a": 2, "b": 2}, 1)
    for name in ("first.zip", "second.zip"):
        _archive(tmp_path / name, ["a", "b"], 2)
    result = evaluate(
        tmp_path / "train",
        tmp_path / "test",
        [tmp_path / "first.zip", tmp_path / "second.zip"],
        backbone=tiny_backbone,
        seeds=1,
        config=TrainConfig(epochs=1, batch_size=4, resolution=8),
    )
    methods = [e["method"] for e in result["entries"]]
    assert methods == ["real only", "diff-ii (first.zip)", "diff-ii (second.zip)"]


def test_mismatched_test_classes_foreign_archives_and_empty_classes_are_refused(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    from diffii_core.evaluate.classifier import TrainConfig
    from diffii_core.evaluate.run import evaluate

    _write_images(tmp_path / "train", {"a": 2, "b": 2}, 0)
    _write_images(tmp_path / "test", {"a": 2, "c": 2}, 1)
    _write_images(tmp_path / "test_ok", {"a": 2, "b": 2}, 1)
    _archive(tmp_path / "foreign.zip", ["a", "x"], 1)
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    config = TrainConfig(epochs=1, batch_size=4, resolution=8)
    with pytest.raises(DatasetError, match=r"test set's classes do not match.*only in training: \['b'\]"):
        evaluate(tmp_path / "train", tmp_path / "test", [], backbone=tiny_backbone, seeds=1, config=config)
    with pytest.raises(DatasetError, match="made from another dataset"):
        evaluate(
            tmp_path / "train",
            tmp_path / "test_ok",
            [tmp_path / "foreign.zip"],
            backbone=tiny_backbone,
            seeds=1,
            config=config,
        )
    with pytest.raises(DatasetError, match="not a diffii archive"):
        evaluate(
            tmp_path / "train",
            tmp_path / "test_ok",
            [tmp_path / "broken.zip"],
            backbone=tiny_backbone,
            seeds=1,
            config=config,
        )
    # A class whose only file is not an image ends up empty.
    for root in (tmp_path / "train", tmp_path / "test_ok"):
        (root / "empty").mkdir()
        (root / "empty" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="empty"):
        evaluate(tmp_path / "train", tmp_path / "test_ok", [], backbone=tiny_backbone, seeds=1, config=config)


def test_waterbirds_sets_report_the_worst_group_and_other_sets_do_not(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    from diffii_core.evaluate.classifier import TrainConfig, worst_group_accuracy
    from diffii_core.evaluate.data import load_split
    from diffii_core.evaluate.run import evaluate, format_table
    from diffii_core.world.datasets import WorldDatasetSpec, waterbirds_groups, write_world_dataset

    spec = WorldDatasetSpec(classes=2, shots=2, seed=0, test_per_class=4, waterbirds=0.9)
    write_world_dataset(tmp_path / "wb", spec)
    test = load_split(tmp_path / "wb" / "test", 8, "test set")
    groups_of = waterbirds_groups(tmp_path / "wb" / "test")
    assert groups_of is not None
    groups = groups_of(test)
    # The test set is balanced: each class's images half on water, half on land.
    assert sorted(groups) == sorted(
        f"{g} bird on {w}" for g in ("water", "land") for w in ("water", "land") for _ in range(2)
    )
    wrong_group = groups[0]
    pred = torch.where(torch.tensor([g == wrong_group for g in groups]), 1 - test.labels, test.labels)
    assert worst_group_accuracy(pred, test.labels, groups) == 0.0
    assert float((pred == test.labels).float().mean()) == 0.75

    report = evaluate(
        tmp_path / "wb" / "train",
        tmp_path / "wb" / "test",
        [],
        backbone=tiny_backbone,
        seeds=1,
        config=TrainConfig(epochs=1, batch_size=4, resolution=8),
        test_groups=groups_of,
    )
    entry = report["entries"][0]
    assert 0.0 <= entry["worst_group"] <= entry["accuracy_mean"]
    assert "worst group" in format_table(report)

    write_world_dataset(tmp_path / "few", WorldDatasetSpec(classes=2, shots=1, test_per_class=1))
    assert waterbirds_groups(tmp_path / "few" / "test") is None
    assert waterbirds_groups(tmp_path / "elsewhere" / "test") is None
