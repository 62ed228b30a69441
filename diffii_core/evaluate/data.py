"""Inputs of `diffii evaluate`: real train and test sets (folders or archives, ImageFolder layout) and
synthetic archives (from `diffii augment` or the service), as tensors with labels."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffii_core.dataset import DatasetLimits, load_dataset
from diffii_core.errors import DatasetError
from diffii_core.evaluate.protocol import SyntheticPool


@dataclass(frozen=True)
class LabelledImages:
    pixels: torch.Tensor  # [N, 3, R, R] in [-1, 1]
    labels: torch.Tensor  # [N]
    class_names: list[str]
    paths: list[str]  # "<class>/<file>", as the dataset names them

    def counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(self.class_names)).tolist()


def to_pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    if not images:
        return torch.zeros((0, 3, resolution, resolution))
    arr = np.stack(
        [
            np.asarray(
                im.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC), np.float32
            )
            for im in images
        ]
    )
    return torch.from_numpy(arr / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def load_split(source: str | Path, resolution: int, what: str) -> LabelledImages:
    """A real image set; `what` ("training set", "test set") names it in errors."""
    data = load_dataset(source, DatasetLimits())
    names = data.class_names()
    empty = [c.name for c in data.classes if not c.images]
    if empty:
        raise DatasetError(f"the {what} has empty classes: {', '.join(empty)}")
    images, labels, paths = [], [], []
    for cls in data.classes:
        for item in cls.images:
            images.append(item.open())
            labels.append(cls.index)
            paths.append(item.path)
    return LabelledImages(to_pixels(images, resolution), torch.tensor(labels), names, paths)


def check_same_classes(train: LabelledImages, test: LabelledImages) -> None:
    if train.class_names != test.class_names:
        only_train = sorted(set(train.class_names) - set(test.class_names))
        only_test = sorted(set(test.class_names) - set(train.class_names))
        raise DatasetError(
            "the test set's classes do not match the training set's"
            f" (only in training: {only_train or 'none'}; only in test: {only_test or 'none'})"
        )


def load_archive(path: str | Path, class_names: list[str], resolution: int) -> tuple[str, SyntheticPool]:
    """(method, pool) of a synthetic archive made from a dataset with exactly `class_names`."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            job = json.loads(zf.read("job.json"))
            lines = zf.read("metadata.jsonl").decode("utf-8").splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
            images = [Image.open(io.BytesIO(zf.read(r["file_name"]))).convert("RGB") for r in records]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"{path} is not a diffii archive (job.json, metadata.jsonl, images): {exc}"
        ) from exc
    made_from = [c["name"] for c in sorted(job.get("classes", []), key=lambda c: c["index"])]
    if made_from != class_names:
        raise DatasetError(
            f"{path} was made from another dataset: its classes are {made_from[:5]}"
            f"{'...' if len(made_from) > 5 else ''}, the training set's {class_names[:5]}"
            f"{'...' if len(class_names) > 5 else ''}"
        )
    classes, targets = [], []
    for r in records:
        classes.append(int(r["label_index"]))
        soft = r.get("soft_label")
        if soft is not None:
            row = torch.tensor(soft, dtype=torch.float32)
            targets.append(row / row.sum())
        else:
            targets.append(
                torch.nn.functional.one_hot(torch.tensor(r["label_index"]), len(class_names)).float()
            )
    method = str(job.get("params", {}).get("method", path.stem))
    target_tensor = torch.stack(targets) if targets else torch.zeros((0, len(class_names)))
    return method, SyntheticPool(
        to_pixels(images, resolution), torch.tensor(classes, dtype=torch.long), target_tensor
    )
