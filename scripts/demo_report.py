"""`make demo`'s last step: check a world archive, write its sheet, and print how faithful it is.

    python -m scripts.demo_report ARCHIVE TRAIN_DIR SHEET

Checks that the archive holds images, one metadata line each, of the training set's classes, made by
the world model; writes one sheet (per class: the real images, a red line, synthetic ones); and prints
the oracle's faithfulness (all four of the class's attributes found in an image) of the synthetic
images beside the real ones'. Exits non-zero on an archive that fails a check.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

from PIL import Image

from diffii_core.world import domain
from diffii_core.world.oracle import attribute_accuracy, load_oracle, predict, to_batch
from diffii_core.world.sheets import archive_images, real_vs_synthetic


def check_archive(archive: Path, classes: list[str]) -> dict[str, int]:
    """Per-class image counts of a sound archive; ValueError naming what is wrong otherwise."""
    with zipfile.ZipFile(archive) as zf:
        images = [n for n in zf.namelist() if n.endswith(".png")]
        lines = [json.loads(line) for line in zf.read("metadata.jsonl").decode("utf-8").splitlines()]
        job = json.loads(zf.read("job.json"))
        has_preview = "preview.html" in zf.namelist()
    if not images or len(images) != len(set(images)):
        raise ValueError("the archive holds no or duplicated images")
    if sorted(line["file_name"] for line in lines) != sorted(images):
        raise ValueError("metadata.jsonl does not list exactly the archive's images")
    if job["model"]["name"] != "world":
        raise ValueError(f"the archive was made by model {job['model']['name']!r}, not 'world'")
    if not has_preview:
        raise ValueError("the archive carries no preview.html")
    counts = {name: 0 for name in classes}
    for line in lines:
        if line["label"] not in counts:
            raise ValueError(f"an image is labelled {line['label']!r}, which is no class of the dataset")
        counts[line["label"]] += 1
    empty = [name for name, count in counts.items() if not count]
    if empty:
        raise ValueError(f"no synthetic images of {empty}")
    return counts


def faithfulness(by_class: dict[str, list[Image.Image]]) -> dict[str, float]:
    """Per class and overall ("all"): the share of images with all four of the class's attributes."""
    oracle = load_oracle()
    report = {}
    for name, images in by_class.items():
        species = [domain.species_by_name(name)] * len(images)
        report[name] = attribute_accuracy(predict(oracle, to_batch(images)), species)["all"]
    total = sum(len(images) for images in by_class.values())
    report["all"] = sum(report[name] * len(images) for name, images in by_class.items()) / total
    return report


def main(archive: Path, train: Path, sheet: Path) -> None:
    folders = sorted(p for p in train.iterdir() if p.is_dir())
    counts = check_archive(archive, [p.name for p in folders])
    print(f"demo: archive checked: {sum(counts.values())} images, one metadata line each, model world")
    real_vs_synthetic(train, archive).save(sheet)
    print(f"demo: preview sheet (per species: real images | synthetic images): {sheet}")

    real_images = {p.name: [Image.open(f).convert("RGB") for f in sorted(p.iterdir())] for p in folders}
    real = faithfulness(real_images)
    made = faithfulness(archive_images(archive))
    print("demo: faithfulness, the oracle's share of images with all four attributes of their species:")
    width = max(len(p.name) for p in folders)
    print(f"demo:   {'species':{width}s} {'real':>6s} {'synthetic':>10s}")
    for p in folders:
        print(f"demo:   {p.name:{width}s} {real[p.name]:6.2f} {made[p.name]:10.2f}  ({counts[p.name]})")
    print(f"demo:   {'all':{width}s} {real['all']:6.2f} {made['all']:10.2f}")
    print(
        f"demo:   chance: {1 / len(domain.all_species()):.3f} for a random species, "
        f"{1 / len(folders):.2f} for a random one of the dataset's {len(folders)}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    try:
        main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        sys.exit(f"demo: the archive failed its check: {exc}")
