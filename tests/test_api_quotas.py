"""Per-owner quotas over the REST API (Postgres, Redis, local store): each limit refuses with its name,
its value and the request's; overrides per owner beat the settings; `diffii admin quota` sets them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from diffii_core.dataset import load_dataset
from diffii_core.params import JobParams
from diffii_core.pipeline import steps
from diffii_core.planning import job_cost
from diffii_core.sample_data import write_sample_dataset
from services.common import quotas
from services.common.db import session_scope
from services.common.models import Owner
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth

ARCHIVE = zip_bytes(good_members())
SMALL = {"model": "tiny", "concepts": {"steps": 1}, "inference_steps": 1, "inversion_steps": 1}


def _upload(client: Any, headers: dict[str, str]) -> Any:
    return client.post("/v1/datasets", headers=headers, files={"file": ("b.zip", ARCHIVE)})


@pytest.fixture
def limited(api_client_factory: Any, make_api_key: Any) -> Any:
    """(client, headers, dataset) of a new owner on an API with these quota settings."""

    def make(owner: str | None = None, **limits: Any) -> tuple[Any, dict[str, str], dict[str, Any]]:
        client, _ = api_client_factory(**limits)
        headers = auth(make_api_key(owner))
        upload = _upload(client, headers)
        assert upload.status_code == 201, upload.text
        return client, headers, upload.json()

    return make


def test_active_jobs_over_the_limit_is_429_with_retry_after(limited: Any) -> None:
    client, headers, dataset = limited(max_active_jobs=2, quota_retry_after=17)
    dataset_id = dataset["id"]
    for _ in range(2):
        assert (
            client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset_id}).status_code
            == 202
        )
    refused = client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset_id})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "17"
    body = refused.json()
    assert (body["limit"], body["limit_value"], body["requested"]) == ("max_active_jobs", 2, 3)
    assert "max_active_jobs" in body["detail"]
    first = client.get("/v1/jobs", headers=headers).json()["jobs"][0]["id"]
    assert client.post(f"/v1/jobs/{first}/cancel", headers=headers).status_code == 200
    # An ended job no longer counts.
    assert (
        client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset_id}).status_code == 202
    )


def planned_cost(params: JobParams, dataset_dir: Path) -> float:
    """The cost written out from what the planner will run on the dataset (not from job_cost)."""
    plans = steps.prepare(load_dataset(dataset_dir), params)
    method, c = params.spec, params.concepts
    learn = c.steps * c.batch_size * c.gradient_accumulation if method.needs_concepts else 0
    images = sum(p.generated for p in plans) * params.inference_steps
    inversions = sum(p.images + len(p.borrowed) for p in plans) * params.inversion_steps
    scale = ((params.resolution or 512) / 512) ** 2
    return (learn + images + (inversions if method.inversion else 0)) * scale


def test_a_job_asking_for_more_work_than_allowed_is_422_naming_its_cost(limited: Any, tmp_path: Path) -> None:
    client, headers, dataset = limited(max_job_cost=1000)
    ok = client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset["id"]})
    assert ok.status_code == 202, ok.text
    # 1.5 x 1 image makes 1 (floor), and a pool filled to 10 borrows only the 2 images the other class has.
    big = {**SMALL, "concepts": {"steps": 1000, "batch_size": 4}, "expansion": 1.5, "fill_pool_to": 10}
    refused = client.post("/v1/jobs", headers=headers, json={**big, "dataset_id": dataset["id"]})
    assert refused.status_code == 422
    body = refused.json()
    assert body["limit"] == "max_job_cost" and body["limit_value"] == 1000
    (tmp_path / "data.zip").write_bytes(ARCHIVE)
    expected = planned_cost(JobParams(**big), tmp_path / "data.zip")
    assert body["requested"] == round(expected, 1) and expected > 4000
    assert "max_job_cost" in body["detail"]


def test_cost_counts_each_term_scaled_by_resolution() -> None:
    base = {"model": "tiny", "expansion": 2, "inference_steps": 10, "inversion_steps": 7}
    params = JobParams(**base, concepts={"steps": 100, "batch_size": 2, "gradient_accumulation": 3})
    # 100 x 2 x 3 concept passes + 2 x 3 + 2 x 5 = 16 images x 10 steps + 8 inversions x 7
    assert job_cost(params, [3, 5]) == 600 + 160 + 56
    assert job_cost(params.model_copy(update={"resolution": 1024}), [3, 5]) == 4 * (600 + 160 + 56)
    # A pool filled to 4 borrows one image for the class of 3: 9 inversions.
    assert job_cost(params.model_copy(update={"fill_pool_to": 4}), [3, 5]) == 600 + 160 + 63
    # Filled to 100, each class borrows only what the other holds: 8 + 8 inversions.
    assert job_cost(params.model_copy(update={"fill_pool_to": 100}), [3, 5]) == 600 + 160 + 112
    # floor(1.5 x 3) + floor(1.5 x 5) = 4 + 7 images, as the planner makes.
    assert job_cost(params.model_copy(update={"expansion": 1.5}), [3, 5]) == 600 + 110 + 56
    mix = JobParams(**base, method="real-mix")  # no concepts, no inversion pool
    assert job_cost(mix, [3, 5]) == 160


@pytest.mark.parametrize(
    "update",
    [
        {"expansion": 1.5},
        {"expansion": 0.29, "fill_pool_to": 3},
        {"expansion": 2.7, "fill_pool_to": 64, "resolution": 256},
        {"method": "real-mix", "expansion": 1.3},
    ],
)
def test_cost_is_what_the_planner_plans_for_the_sample_data(update: dict[str, Any], tmp_path: Path) -> None:
    data = write_sample_dataset(tmp_path / "data")
    params = JobParams(model="tiny", inference_steps=10, inversion_steps=7, **update)
    counts = [len(c.images) for c in load_dataset(data).classes]
    assert job_cost(params, counts) == planned_cost(params, data)


def test_stored_bytes_over_the_limit_refuses_uploads_413_and_jobs_422(limited: Any) -> None:
    size = len(ARCHIVE)
    client, headers, dataset = limited(max_stored_bytes=size + size // 2)
    refused = _upload(client, headers)
    assert refused.status_code == 413
    body = refused.json()
    assert (body["limit"], body["limit_value"], body["requested"]) == (
        "max_stored_bytes",
        size + size // 2,
        2 * size,
    )
    # Under the limit still (one archive stored): a job is accepted.
    assert (
        client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset["id"]}).status_code
        == 202
    )


def test_a_job_while_storage_is_full_is_422(limited: Any) -> None:
    client, headers, dataset = limited(max_stored_bytes=len(ARCHIVE))
    refused = client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset["id"]})
    assert refused.status_code == 422
    assert refused.json()["limit"] == "max_stored_bytes"


def test_an_owners_override_beats_the_setting(limited: Any, pg_session_factory: Any) -> None:
    name = f"quota-override-{uuid.uuid4().hex[:8]}"
    client, headers, dataset = limited(name, max_active_jobs=1)
    with session_scope(pg_session_factory) as s:
        quotas.set_overrides(s, s.scalar(select(Owner.id).where(Owner.name == name)), max_active_jobs=3)
    codes = [
        client.post("/v1/jobs", headers=headers, json={**SMALL, "dataset_id": dataset["id"]}).status_code
        for _ in range(4)
    ]
    assert codes == [202, 202, 202, 429]


def test_the_routes_document_their_quota_answers(api: Any) -> None:
    schema = api.get("/openapi.json").json()
    create = schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert create["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/QuotaProblem")
    assert "Retry-After" in create["429"]["headers"]
    assert "QuotaProblem" in str(create["422"])
    assert "max_stored_bytes" in schema["paths"]["/v1/datasets"]["post"]["responses"]["413"]["description"]
    assert {"limit", "limit_value", "requested"} <= set(
        schema["components"]["schemas"]["QuotaProblem"]["required"]
    )


def test_admin_quota_set_and_show(
    pg_url: str, make_api_key: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from services.cli.main import cli as main

    make_api_key("quota-cli-owner")
    monkeypatch.setenv("DIFFII_DATABASE_URL", pg_url)
    monkeypatch.setenv("DIFFII_HOME", str(tmp_path))
    monkeypatch.setenv("DIFFII_MAX_JOB_COST", "5000")
    runner = CliRunner()
    result = runner.invoke(main, ["admin", "quota", "set", "quota-cli-owner", "--max-active-jobs", "7"])
    assert result.exit_code == 0, result.output
    shown = runner.invoke(main, ["admin", "quota", "show", "quota-cli-owner"])
    assert shown.exit_code == 0, shown.output
    assert "max_active_jobs = 7 [override]  (in use: 0)" in shown.output
    assert "max_job_cost = 5000 [default]" in shown.output
    reset = runner.invoke(main, ["admin", "quota", "set", "quota-cli-owner", "--max-active-jobs", "default"])
    assert "max_active_jobs = 100 [default]" in reset.output
    bad = runner.invoke(main, ["admin", "quota", "set", "quota-cli-owner", "--max-job-cost", "lots"])
    assert bad.exit_code == 2 and "'lots' is not a number" in bad.output
    missing = runner.invoke(main, ["admin", "quota", "show", "nobody-here"])
    assert missing.exit_code == 1 and "no owner named 'nobody-here'" in missing.output
