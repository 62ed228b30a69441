"""Settings shared by every service process (API, worker, CLI admin commands).

One pydantic-settings class per service, all reading `DIFFII_*` environment variables. The defaults
are the embedded ones: everything lives under DIFFII_HOME, so `diffii up` needs no server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from diffii_core.model_registry import BUILTIN_MODELS, model_table

if TYPE_CHECKING:
    from diffii_core.dataset import DatasetLimits
    from services.common.quotas import Limits


def default_home() -> Path:
    return Path("~/.diffii").expanduser()


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIFFII_", extra="ignore", validate_default=True)

    home: Path = Field(default_factory=default_home, description="embedded state folder")
    # Empty means "derive from home"; resolved in _fill_embedded_defaults.
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///{home}/diffii.db")
    broker_url: str = Field("", description="Celery broker URL; default sqla+sqlite:///{home}/broker.db")

    storage: Literal["local", "s3"] = "local"
    storage_dir: Path | None = Field(None, description="local object store root; default {home}/objects")
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint that presigned URLs are signed for (what clients can reach)"
    )
    s3_bucket: str = "diffii"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"
    s3_addressing_style: Literal["auto", "path", "virtual"] = "path"

    # NoDecode: the raw DIFFII_MODELS text goes to model_table, the rule `diffii augment` applies too
    # (an empty value is the built-ins, a bad one is refused with the same message).
    models: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(BUILTIN_MODELS),
        description="the built-in models with DIFFII_MODELS merged over them (diffii_core.model_registry)",
    )
    model_cache_dir: Path | None = None
    allowed_dataset_buckets: list[str] = Field(
        default_factory=list, description="buckets a job's dataset_uri may name (s3://bucket/key)"
    )
    # One variable for the API (upload check) and the worker (full read), so they never disagree.
    dataset_limits: dict[str, int] = Field(
        default_factory=dict,
        description="JSON overrides of diffii_core.dataset.DatasetLimits fields (counts, sizes, pixels)",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: Any) -> dict[str, str]:
        return model_table(value)

    @field_validator("dataset_limits")
    @classmethod
    def _known_limits(cls, value: dict[str, int]) -> dict[str, int]:
        from diffii_core.dataset import DatasetLimits

        DatasetLimits.from_overrides(value)  # ValueError naming the bad field, at start-up
        return value

    retention_days: float = Field(
        30.0,
        gt=0,
        description="days an ended job's archive and all its objects are kept (`diffii admin gc`)",
    )
    intermediate_retention_days: float = Field(
        1.0,
        gt=0,
        description="days an ended job's pools, concepts, loose images are kept (`diffii admin gc`)",
    )
    dataset_retention_days: float = Field(
        30.0,
        gt=0,
        description="days an uploaded dataset is kept after its upload and its last job, once every "
        "job on it has ended (`diffii admin gc`)",
    )

    # Admission (services/common/lifecycle/admission.py): read by the API, the workers and the sweeper.
    in_flight_per_slot: int = Field(
        1, ge=1, le=100, description="shards admitted (queued or running) at once per worker task process"
    )
    fair_share_window_seconds: float = Field(
        600.0,
        ge=0,
        description="free slots go to the owner whose shards used the workers least in this many "
        "seconds (0: the fewest shards in flight)",
    )
    worker_slots: int = Field(
        1, ge=1, description="task processes assumed while no worker has reported itself (admission)"
    )
    worker_seen_seconds: float = Field(
        60.0, gt=0, description="a worker that has not reported itself for this long no longer counts"
    )

    # Per-owner quotas (services/common/quotas.py); `diffii admin quota set` overrides them per owner.
    max_active_jobs: int = Field(100, ge=1, description="jobs queued or running per owner (over: 429)")
    max_job_cost: float = Field(
        1e7, gt=0, description="work one job may ask for, in 512-pixel model passes (over: 422)"
    )
    max_stored_bytes: int = Field(
        50 * 2**30, ge=1, description="bytes of datasets and archives one owner stores (over: 413 / 422)"
    )
    quota_retry_after: int = Field(
        30, ge=1, description="seconds a 429 for max_active_jobs tells the client to wait (Retry-After)"
    )

    def default_limits(self) -> Limits:
        from services.common.quotas import Limits

        return Limits(self.max_active_jobs, self.max_job_cost, self.max_stored_bytes)

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> CommonSettings:
        self.home = self.home.expanduser()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'diffii.db'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{self.home / 'broker.db'}"
        if self.storage_dir is None:
            self.storage_dir = self.home / "objects"
        self.storage_dir = self.storage_dir.expanduser()
        return self

    def make_dataset_limits(self) -> DatasetLimits:
        from diffii_core.dataset import DatasetLimits

        return DatasetLimits.from_overrides(self.dataset_limits)

    @property
    def uses_embedded_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def ensure_home(self) -> None:
        """Create the folders the embedded defaults write into (SQLite files need their parent)."""
        for url in (self.database_url, self.broker_url):
            path = sqlite_path(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        if self.storage == "local":
            assert self.storage_dir is not None
            self.storage_dir.mkdir(parents=True, exist_ok=True)


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// or sqla+sqlite:/// URL, None for anything else or in-memory."""
    for scheme in ("sqla+sqlite:///", "sqlite+pysqlite:///", "sqlite:///"):
        if url.startswith(scheme):
            rest = url[len(scheme) :].split("?", 1)[0]
            if not rest or rest == ":memory:":
                return None
            return Path(rest)
    return None
