"""The job manifest's stored schema (services/common/manifest.py), apart from the library's ClassPlan:
what the old code wrote still reads, new keys are ignored, a newer version is refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from diffii_core.pipeline.steps import ClassPlan
from services.common.manifest import VERSION, ClassEntry, JobManifest, ManifestVersionError

PLANS = [
    ClassPlan(index=0, name="cat", images=2, generated=3, sources=["cat/1.png", "cat/2.png"]),
    ClassPlan(index=1, name="dog", images=1, generated=1, sources=["dog/1.png"], borrowed=["cat/2.png"]),
]
SKIPPED = [{"path": "notes.txt", "reason": "not an image"}]


def written_by_the_old_code() -> dict[str, Any]:
    """A manifest as jobs in flight hold it: the dataset's manifest with the library's plans, no version."""
    return {"classes": [p.to_dict() for p in PLANS], "images": 3, "skipped": SKIPPED}


def test_a_plan_goes_into_the_manifest_and_comes_back_the_same() -> None:
    entries = [ClassEntry.from_plan(p) for p in PLANS]
    assert [e.to_plan() for e in entries] == PLANS
    manifest = JobManifest(classes=entries, images=3, skipped=SKIPPED)
    stored = manifest.stored()
    assert stored["version"] == VERSION == 1
    assert JobManifest.read(stored) == manifest and manifest.plans() == PLANS


def test_a_manifest_written_without_a_version_reads_as_version_1() -> None:
    manifest = JobManifest.read(written_by_the_old_code())
    assert manifest is not None and manifest.version == 1
    assert manifest.plans() == PLANS and [s.model_dump() for s in manifest.skipped] == SKIPPED
    # What it stores again is the old content, with its version named.
    assert manifest.stored() == {"version": 1, **written_by_the_old_code()}


def test_keys_this_version_does_not_know_are_ignored() -> None:
    stored = written_by_the_old_code()
    stored["origin"] = "a later release"
    stored["classes"][0]["weight"] = 0.5  # a field the library's plan gained
    stored["skipped"][0]["size"] = 12
    manifest = JobManifest.read(stored)
    assert manifest is not None and manifest.plans() == PLANS
    assert "weight" not in manifest.stored()["classes"][0] and "origin" not in manifest.stored()


def test_a_newer_version_is_refused_by_name() -> None:
    with pytest.raises(ManifestVersionError, match="version 2; this release reads up to version 1"):
        JobManifest.read({**written_by_the_old_code(), "version": 2})


def test_no_manifest_before_the_prepare_stage() -> None:
    assert JobManifest.read(None) is None


def test_an_auto_jobs_choice_is_kept_and_absent_for_every_other_job() -> None:
    from services.common.manifest import ChoiceEntry

    manifest = JobManifest(classes=[ClassEntry.from_plan(p) for p in PLANS], images=3, skipped=SKIPPED)
    assert "choice" not in manifest.stored()
    choice = ChoiceEntry(params={"method": "diff-mix", "strength": [0.7]}, record={"chosen": "diff-mix@0.7"})
    chosen = manifest.model_copy(update={"choice": choice})
    stored = chosen.stored()
    assert stored["choice"] == {"params": choice.params, "record": choice.record} and stored["version"] == 1
    assert JobManifest.read(stored) == chosen
