"""Request and response bodies of the REST API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from diffii_core.params import CROSS_FIELD_SCHEMA, ConceptParams, JobParams
from services.common.dataset_uri import S3_URI_PATTERN, parse_s3_uri
from services.common.models import JobStatus, ShardKind, ShardStatus

ID_PATTERN = r"^[0-9A-Za-z_-]{1,64}$"  # the service's ids are 32 hex digits


class ClassOut(BaseModel):
    name: str
    images: int


class SkippedOut(BaseModel):
    path: str
    reason: str


class DatasetOut(BaseModel):
    id: str
    filename: str
    classes: list[ClassOut] = Field(
        description="image files per class (by name and signature; the job decodes them, see JobOut.dataset)"
    )
    images: int
    bytes: int
    skipped: list[SkippedOut] = Field(
        description="files the structural check left out, with the reason (not an image, outside a class...)"
    )
    created_at: datetime


class DatasetReportOut(BaseModel):
    """What the job's prepare stage found when it decoded every image of the dataset."""

    classes: list[ClassOut] = Field(description="usable images per class (decodable, within max_pixels)")
    images: int
    skipped: list[SkippedOut] = Field(description="files left out, with the reason (damaged, too large...)")


# JSON's types as the schema states them: "5" is not a number, 1 not a boolean, NaN and 1e400
# (infinity once parsed) no number at all; 8.0 is an integer, as JSON Schema has it.
STRICT = ConfigDict(strict=True, allow_inf_nan=False)
INTEGER = (int, int | None)


def _integral_float(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    field = cls.model_fields.get(info.field_name or "")
    if isinstance(value, float) and value.is_integer() and field is not None and field.annotation in INTEGER:
        return int(value)
    return value


MAX_SEED = 2**63 - 1


def _at_most(limit: int) -> str:
    """A regular expression for the decimal numbers 0..limit, written without leading zeros."""
    digits = str(limit)
    options = ["0", f"[1-9][0-9]{{0,{len(digits) - 2}}}"]
    for i, digit in enumerate(digits):
        low = "1" if i == 0 else "0"
        if digit > low:
            top = str(int(digit) - 1)
            rest = len(digits) - i - 1
            options.append(f"{digits[:i]}[{low}-{top}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    options.append(digits)
    return f"^({'|'.join(options)})$"


# Seeds are 63-bit; JavaScript's numbers hold 53 bits, so a seed goes out as its decimal digits and
# may come in that way too (docs/service.md).
SEED_DIGITS = _at_most(MAX_SEED)
ANY_DIGITS = re.compile(r"^[0-9]{1,30}$")
SEED_TEXT = "decimal digits of an integer from 0 to 2**63 - 1 (exact in JavaScript, whose numbers are not)"
SEED_IN = WithJsonSchema(
    {
        "anyOf": [
            {"type": "integer", "minimum": 0, "maximum": MAX_SEED},
            {"type": "string", "pattern": SEED_DIGITS, "description": SEED_TEXT},
            {"type": "null"},
        ]
    },
    mode="validation",
)


class ConceptRequest(ConceptParams):
    model_config = STRICT
    _integers = field_validator("*", mode="before")(classmethod(_integral_float))


class JobRequest(JobParams):
    """Job parameters plus where the dataset is. Unknown fields are refused (422 naming them)."""

    # Exactly one of the two (services.api.openapi states it); null is not offered in the schema.
    model_config = ConfigDict(**STRICT, json_schema_extra=CROSS_FIELD_SCHEMA)
    _integers = field_validator("*", mode="before")(classmethod(_integral_float))

    dataset_id: Annotated[str, Field(pattern=ID_PATTERN)] | SkipJsonSchema[None] = Field(
        None, description="id returned by POST /v1/datasets"
    )
    dataset_uri: Annotated[str, Field(max_length=2048, pattern=S3_URI_PATTERN)] | SkipJsonSchema[None] = (
        Field(None, description="s3://bucket/key of an archive in a bucket the operator allowed")
    )
    concepts: ConceptRequest = Field(default_factory=ConceptRequest)
    seed: Annotated[int | None, SEED_IN] = Field(  # type: ignore[assignment]
        None,
        ge=0,
        le=MAX_SEED,
        description="job seed, an integer or its decimal digits as a string; omitted: the server picks "
        "one and reports it",
    )
    priority: int = Field(
        0,
        ge=-1000,
        le=1000,
        description="order among the same owner's jobs when workers are shared: higher first, then older "
        "first (owners share the workers fairly whatever their priorities)",
    )

    @model_validator(mode="after")
    def _one_dataset(self) -> JobRequest:
        if (self.dataset_id is None) == (self.dataset_uri is None):
            raise ValueError("give exactly one of dataset_id and dataset_uri")
        return self

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_digits(cls, value: Any) -> Any:
        """Decimal digits (a JavaScript client's exact seed) are the integer; the range is checked next."""
        return int(value) if isinstance(value, str) and ANY_DIGITS.match(value) else value

    @field_validator("dataset_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        if value is not None and parse_s3_uri(value) is None:
            raise ValueError("dataset_uri must look like s3://bucket/key")
        return value

    def job_params(self, seed: int) -> JobParams:
        data = self.model_dump(exclude={"dataset_id", "dataset_uri", "seed", "priority"})
        return JobParams(**data, seed=seed)


SeedOut = Annotated[
    int,
    PlainSerializer(str, return_type=str, when_used="json"),
    WithJsonSchema(
        {"type": "string", "pattern": SEED_DIGITS, "description": SEED_TEXT}, mode="serialization"
    ),
]


class JobParamsOut(JobParams):
    """The job's parameters as it runs them (every default filled in); `seed` as decimal digits."""

    # The request's cross-field rules are not the answer's; a stored key a later version dropped is left out.
    model_config = ConfigDict(json_schema_extra=None, extra="ignore")

    seed: SeedOut = Field(description="the job seed, as decimal digits: every image's seed derives from it")


class ShardOut(BaseModel):
    kind: ShardKind = Field(description="prepare, learn, generate or package")
    class_name: str | None
    class_index: int | None
    start: int
    stop: int
    status: ShardStatus
    attempts: int = Field(description="attempts started so far")
    max_attempts: int
    images_done: int
    images_total: int
    error: str | None = Field(description="the last attempt's error (kept while a retry waits)")
    not_before: datetime | None = Field(description="a retry waiting for its backoff starts after this")
    worker: str | None
    heartbeat_at: datetime | None


class LearningOut(BaseModel):
    step: int = Field(description="optimiser steps of concept learning done (checkpointed or running)")
    steps: int = Field(description="optimiser steps in all (the job's concepts.steps)")


class ProgressOut(BaseModel):
    stage: JobStatus
    shards_done: int
    shards_total: int
    images_done: int
    images_total: int
    learning: LearningOut | None = Field(
        None,
        description="concept learning's progress, step of steps, updated at each heartbeat and at the "
        "end of each learning slice; null for a method that learns no concepts, and before the "
        "prepare stage has planned the job",
    )
    shards: list[ShardOut] | None = Field(None, description="per-shard detail (GET /v1/jobs/{id} only)")
    steps: list[ShardOut] | None = Field(
        None, description="the prepare, learn and package steps, with attempts and errors (GET only)"
    )


class JobOut(BaseModel):
    id: str
    status: JobStatus
    message: str | None
    dataset_id: str | None
    dataset_uri: str | None
    params: JobParamsOut
    cancel_requested: bool
    priority: int = Field(description="order among the owner's own jobs (higher first)")
    archive_ready: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    progress: ProgressOut
    dataset: DatasetReportOut | None = Field(
        None, description="the decoded dataset (set by the prepare stage; null before it)"
    )


class ArchiveLink(BaseModel):
    url: str = Field(description="the signed URL of the archive (zip); no API key needed, it expires")
    expires_in: int = Field(description="seconds the link stays valid")


class PreviewOut(BaseModel):
    index: int
    name: str
    url: str = Field(description="the class's sheet (PNG): a few real images beside synthetic ones")


class PreviewList(BaseModel):
    job_id: str
    classes: list[PreviewOut]


class DatasetPage(BaseModel):
    datasets: list[DatasetOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str] = Field(description='each dependency checked (database, broker, storage...): "ok"')
    supervisor: dict[str, Any] | None = Field(
        None, description="under `diffii up`: the supervisor's children, their restarts and last exits"
    )


class NotReadyOut(BaseModel):
    status: Literal["unavailable"]
    detail: str = Field(description="which checks failed")
    checks: dict[str, str] = Field(description='each dependency: "ok" or why it failed')


class Problem(BaseModel):
    """Every error answer but a 422's: what is wrong, in words (a limit names itself and its value)."""

    detail: str


class QuotaProblem(Problem):
    """A request over one of the owner's quotas (`diffii admin quota show OWNER`)."""

    limit: str = Field(description="max_active_jobs, max_job_cost or max_stored_bytes")
    limit_value: float = Field(description="the owner's limit")
    requested: float = Field(description="what the request would reach: jobs, cost units or bytes")


# FastAPI's own 422 body (loc, msg, type, input, ctx), for a route whose 422 FastAPI cannot infer.
INVALID = {
    "description": "fields that are wrong, each named",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}},
}


def problem(description: str) -> dict[str, Any]:
    """An OpenAPI response entry with a Problem body."""
    return {"model": Problem, "description": description}


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: problem("missing, unknown or revoked API key")}
