"""The manifest a job row stores once its prepare stage has read the dataset: the classes as the job
plans them, the dataset's image count and the files it left out.

The service's own schema, versioned apart from the library's `ClassPlan`: a field the library adds to
its plan changes nothing stored, and a job written by an older worker (no `version`: version 1) still
runs on a newer one. Keys this version does not know are ignored; a manifest of a newer version than
this code knows is refused with `ManifestVersionError` (a worker of the newer release can run it, so the
shard is retried rather than the job failed).

The API reads `classes` (names, image counts) and `skipped`; the worker turns each class back into the
library's plan (`ClassEntry.to_plan`). A job of method "auto" gains `choice` once its learn stage has
chosen a recipe (optional: absent for every other job, and stored only when present).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from diffii_core.pipeline.steps import ClassPlan

VERSION = 1  # the version this code writes and the newest it reads


class ManifestVersionError(RuntimeError):
    """The manifest was written by a newer release than this one."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ClassEntry(_Entry):
    """One class: its real images (`sources`, in dataset order), how many images to make, and the
    other classes' images that fill its inversion pool (`borrowed`)."""

    index: int
    name: str
    images: int
    generated: int
    sources: list[str]
    borrowed: list[str] = Field(default_factory=list)

    @classmethod
    def from_plan(cls, plan: ClassPlan) -> ClassEntry:
        return cls(
            index=plan.index, name=plan.name, images=plan.images, generated=plan.generated,
            sources=list(plan.sources), borrowed=list(plan.borrowed),
        )  # fmt: skip

    def to_plan(self) -> ClassPlan:
        # Imported here: the API reads manifests and must not load the library's engine (torch).
        from diffii_core.pipeline.steps import ClassPlan

        return ClassPlan(
            index=self.index, name=self.name, images=self.images, generated=self.generated,
            sources=list(self.sources), borrowed=list(self.borrowed),
        )  # fmt: skip


class SkippedEntry(_Entry):
    path: str
    reason: str


class ChoiceEntry(_Entry):
    """Method "auto"'s choice (`diffii_core.pipeline.choice`): the chosen candidate's whole parameters,
    which the generate and package stages run, and the record job.json keeps (every score)."""

    params: dict[str, Any]
    record: dict[str, Any]


class JobManifest(_Entry):
    version: int = VERSION
    classes: list[ClassEntry]
    images: int
    skipped: list[SkippedEntry] = Field(default_factory=list)
    choice: ChoiceEntry | None = None

    @field_validator("version")
    @classmethod
    def _known(cls, version: int) -> int:
        if version > VERSION:
            raise ManifestVersionError(
                f"the job's manifest is version {version}; this release reads up to version {VERSION}"
            )
        return version

    @classmethod
    def read(cls, stored: dict[str, Any] | None) -> JobManifest | None:
        """The manifest of a job row (None before its prepare stage wrote one)."""
        if stored is None:
            return None
        # No `version`: written before manifests had one, so version 1. A newer version raises
        # ManifestVersionError from the validator (not a ValueError, so pydantic lets it through).
        return cls.model_validate(stored)

    def stored(self) -> dict[str, Any]:
        """What the job row's `manifest` column holds."""
        return self.model_dump(mode="json", exclude=None if self.choice else {"choice"})

    def plans(self) -> list[ClassPlan]:
        return [c.to_plan() for c in self.classes]
