"""Jobs over the REST API: creation, 422 per field, idempotency, pagination, cancel, archive links."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.common.db import session_scope
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus, utcnow
from services.common.storage import make_storage
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth


def test_create_job_stores_job_and_prepare_shard(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    response = api.post(
        "/v1/jobs",
        headers=owner["headers"],
        json={"dataset_id": owner["dataset_id"], "metaclass": "bird", "concepts": {"lora_rank": 4}},
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    assert job["params"]["metaclass"] == "bird"
    assert job["params"]["concepts"]["lora_rank"] == 4
    assert job["params"]["expansion"] == 5.0  # defaults are filled in and reported
    assert job["params"]["seed"].isdigit()  # omitted seed: picked by the server, kept, sent as digits
    steps = job["progress"].pop("steps")
    assert job["progress"] == {
        "stage": "queued",
        "shards_done": 0,
        "shards_total": 0,
        "images_done": 0,
        "images_total": 0,
        "learning": None,  # no learn shard before the prepare stage has planned the job
        "shards": [],
    }
    # The prepare step, with its attempts so far (it may already have been sent to the broker).
    assert [(s["kind"], s["attempts"], s["max_attempts"], s["error"]) for s in steps] == [
        ("prepare", 0, 3, None)
    ]
    with pg_session_factory() as session:
        shards = session.scalars(select(Shard).where(Shard.job_id == job["id"])).all()
        assert [(s.kind, s.seq) for s in shards] == [(ShardKind.prepare, 0)]
        # Committed first, then sent to the broker (Redis is up here), which marks it queued.
        assert shards[0].status == ShardStatus.queued
        assert str(session.get(Job, job["id"]).params["seed"]) == job["params"]["seed"]

    again = api.get(f"/v1/jobs/{job['id']}", headers=owner["headers"]).json()
    assert again["params"] == job["params"]


def test_two_jobs_without_seed_get_different_seeds(api: Any, owner: dict[str, Any]) -> None:
    seeds = {
        api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
            "params"
        ]["seed"]
        for _ in range(2)
    }
    assert len(seeds) == 2


def test_given_seed_is_kept(api: Any, owner: dict[str, Any]) -> None:
    body = {"dataset_id": owner["dataset_id"], "seed": 1234}
    assert api.post("/v1/jobs", headers=owner["headers"], json=body).json()["params"]["seed"] == "1234"


# Every JobParams field with a value out of its range (or of the wrong kind) -> 422 naming it.
OUT_OF_RANGE: list[tuple[dict[str, Any], list[str]]] = [
    ({"method": "magic"}, ["method"]),
    ({"metaclass": ""}, ["metaclass"]),
    ({"metaclass": "   "}, ["metaclass"]),
    ({"metaclass": "x" * 65}, ["metaclass"]),
    ({"expansion": 0}, ["expansion"]),
    ({"expansion": 101}, ["expansion"]),
    ({"split_ratio": -0.1}, ["split_ratio"]),
    ({"split_ratio": 1.5}, ["split_ratio"]),
    ({"inference_steps": 0}, ["inference_steps"]),
    ({"inference_steps": 1001}, ["inference_steps"]),
    ({"inversion_steps": 0}, ["inversion_steps"]),
    ({"inversion_steps": 1001}, ["inversion_steps"]),
    ({"guidance_scale": 0.5}, ["guidance_scale"]),
    ({"guidance_scale": 51}, ["guidance_scale"]),
    ({"suffixes": []}, ["suffixes"]),
    ({"suffixes": [""]}, ["suffixes"]),
    ({"suffixes": ["x" * 201]}, ["suffixes"]),
    ({"suffixes": ["a"] * 101}, ["suffixes"]),
    ({"seed": -1}, ["seed"]),
    ({"seed": 2**63}, ["seed"]),
    ({"model": ""}, ["model"]),
    ({"model": "sd-unknown"}, ["model"]),
    ({"resolution": 16}, ["resolution"]),
    ({"resolution": 4096}, ["resolution"]),
    ({"resolution": 100}, ["resolution"]),  # not a multiple of 8
    ({"concepts": {"steps": -1}}, ["concepts", "steps"]),
    ({"concepts": {"lora_rank": 0}}, ["concepts", "lora_rank"]),
    ({"concepts": {"lora_rank": 257}}, ["concepts", "lora_rank"]),
    ({"concepts": {"tokens_per_class": 0}}, ["concepts", "tokens_per_class"]),
    ({"concepts": {"tokens_per_class": 17}}, ["concepts", "tokens_per_class"]),
    ({"concepts": {"learning_rate": 0}}, ["concepts", "learning_rate"]),
    ({"concepts": {"learning_rate": 2}}, ["concepts", "learning_rate"]),
    ({"concepts": {"batch_size": 0}}, ["concepts", "batch_size"]),
    ({"concepts": {"checkpoint_every": 0}}, ["concepts", "checkpoint_every"]),
    ({"concepts": {"colour": 1}}, ["concepts", "colour"]),
    ({"inference_steps": "many"}, ["inference_steps"]),
    ({"unknown_field": 1}, ["unknown_field"]),
    ({"dataset_uri": "http://example.com/x.zip"}, ["dataset_uri"]),
    ({"dataset_uri": "s3://not-allowed-bucket/x.zip"}, ["dataset_uri"]),
    ({"fill_pool_to": -1}, ["fill_pool_to"]),
    ({"fill_pool_to": 65}, ["fill_pool_to"]),
]


@pytest.mark.parametrize(
    ("change", "loc"), OUT_OF_RANGE, ids=lambda v: str(v)[:40] if isinstance(v, dict) else None
)
def test_out_of_range_field_is_422_naming_it(
    api: Any, owner: dict[str, Any], change: dict[str, Any], loc: list[str]
) -> None:
    body = {"dataset_id": owner["dataset_id"], **change}
    if "dataset_uri" in change:
        del body["dataset_id"]
    response = api.post("/v1/jobs", headers=owner["headers"], json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"][1 : 1 + len(loc)] == loc for error in errors), errors
    assert all(error["msg"] for error in errors)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"method": "diff-mix", "fill_pool_to": 3}, "diff-mix has no inversion pool: fill_pool_to"),
        ({"method": "diff-gen", "strength": 0.5}, "diff-gen starts from no real image: strength"),
    ],
)
def test_a_field_the_method_cannot_use_is_422_saying_why(
    api: Any, owner: dict[str, Any], change: dict[str, Any], says: str
) -> None:
    response = api.post(
        "/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"], **change}
    )
    assert response.status_code == 422, response.text
    assert says in str(response.json()["detail"])


def test_both_or_neither_dataset_is_422(api: Any, owner: dict[str, Any]) -> None:
    for body in ({}, {"dataset_id": owner["dataset_id"], "dataset_uri": "s3://bkt/k.zip"}):
        response = api.post("/v1/jobs", headers=owner["headers"], json=body)
        assert response.status_code == 422
        assert "dataset_id and dataset_uri" in str(response.json()["detail"])


def test_dataset_uri_in_an_allowed_bucket_is_accepted(
    api_client_factory: Callable[..., Any], make_api_key: Any
) -> None:
    client, _ = api_client_factory(allowed_dataset_buckets=["team-data"])
    response = client.post(
        "/v1/jobs", headers=auth(make_api_key()), json={"dataset_uri": "s3://team-data/birds/train.tar.gz"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["dataset_uri"] == "s3://team-data/birds/train.tar.gz"


def test_unknown_dataset_id_is_404(api: Any, owner: dict[str, Any]) -> None:
    response = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": "0" * 32})
    assert response.status_code == 404
    assert response.json() == {"detail": f"dataset {'0' * 32} not found"}


def test_idempotency_key_returns_one_job(api: Any, owner: dict[str, Any], pg_session_factory: Any) -> None:
    headers = {**owner["headers"], "Idempotency-Key": "retry-me"}
    body = {"dataset_id": owner["dataset_id"], "expansion": 2}
    first = api.post("/v1/jobs", headers=headers, json=body)
    second = api.post("/v1/jobs", headers=headers, json=body)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["params"]["seed"] == first.json()["params"]["seed"]
    with pg_session_factory() as session:
        jobs = session.scalars(
            select(Job).where(Job.idempotency_key == "retry-me", Job.dataset_id == owner["dataset_id"])
        )
        assert len(jobs.all()) == 1

    conflict = api.post("/v1/jobs", headers=headers, json={**body, "expansion": 3})
    assert conflict.status_code == 409
    assert first.json()["id"] in conflict.json()["detail"]


def test_idempotency_keys_are_per_owner(api: Any, owner: dict[str, Any], make_api_key: Any) -> None:
    other_key = make_api_key()
    other_ds = api.post(
        "/v1/datasets", headers=auth(other_key), files={"file": ("b.zip", zip_bytes(good_members()))}
    )
    a = api.post(
        "/v1/jobs",
        headers={**owner["headers"], "Idempotency-Key": "k1"},
        json={"dataset_id": owner["dataset_id"]},
    )
    b = api.post(
        "/v1/jobs",
        headers={**auth(other_key), "Idempotency-Key": "k1"},
        json={"dataset_id": other_ds.json()["id"]},
    )
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def _set_created(pg_session_factory: Any, job_ids: list[str]) -> None:
    # Distinct, known creation times (oldest first), plus two with the same time to exercise the id tiebreak.
    base = utcnow() - timedelta(hours=1)
    with session_scope(pg_session_factory) as session:
        for i, job_id in enumerate(job_ids):
            session.get(Job, job_id).created_at = base + timedelta(seconds=min(i, 3))


def test_cursor_pagination_walks_every_job_once_newest_first(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    ids = [
        api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()["id"]
        for _ in range(7)
    ]
    _set_created(pg_session_factory, ids)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", headers=owner["headers"], params=params).json()
        pages += 1
        assert len(page["jobs"]) <= 3
        seen.extend(job["id"] for job in page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids) and len(seen) == len(set(seen))
    # Newest first; equal creation times fall back to id order (descending).
    expected = sorted(ids, key=lambda j: (min(ids.index(j), 3), j), reverse=True)
    assert seen == expected


def test_list_filters_by_status(api: Any, owner: dict[str, Any]) -> None:
    ids = [
        api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()["id"]
        for _ in range(2)
    ]
    api.post(f"/v1/jobs/{ids[0]}/cancel", headers=owner["headers"])
    cancelled = api.get("/v1/jobs", headers=owner["headers"], params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["jobs"]] == [ids[0]]
    assert cancelled["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"status": "sleeping"}, "status"),
        ({"cursor": "@@"}, "cursor"),
    ],
)
def test_list_rejects_bad_query(api: Any, owner: dict[str, Any], params: dict[str, Any], field: str) -> None:
    response = api.get("/v1/jobs", headers=owner["headers"], params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_cancel_before_anything_runs_is_immediate(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    response = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    with pg_session_factory() as session:
        shards = session.scalars(select(Shard).where(Shard.job_id == job_id)).all()
        assert [s.status for s in shards] == [ShardStatus.cancelled]
    again = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


def test_a_failed_admission_pass_after_a_cancel_still_answers_the_cancel(
    api: Any, owner: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel is committed before the admission pass; a pass that fails on the database (here a
    missing table on the request's own connection, as a deadlock would) leaves the pending shards to
    the sweeper's pass, and the cancel is still answered."""
    from sqlalchemy import text

    from services.api.routes import jobs as routes

    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]

    def failing_pass(session: Any) -> list[str]:
        session.execute(text("SELECT * FROM no_such_table"))
        return []

    monkeypatch.setattr(routes, "dispatch", failing_pass)
    response = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


def test_cancel_with_a_running_shard_is_cooperative(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    with session_scope(pg_session_factory) as session:
        job = session.get(Job, job_id)
        job.status = JobStatus.generating
        for shard in job.shards:
            shard.status = ShardStatus.succeeded
        session.add(
            Shard(job_id=job_id, seq=2, kind=ShardKind.generate, status=ShardStatus.running, class_index=0)
        )
        session.add(
            Shard(job_id=job_id, seq=3, kind=ShardKind.generate, status=ShardStatus.queued, class_index=1)
        )
    response = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert response.status_code == 200
    body = response.json()
    # Two-phase: the running shard's worker stops at its next batch and completes the cancel; the
    # shard that had not started is closed at once.
    assert body["status"] == "cancelling" and body["cancel_requested"] is True
    assert body["finished_at"] is None
    assert [s["status"] for s in body["progress"]["shards"]] == ["running", "cancelled"]
    again = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert again.status_code == 200 and again.json()["status"] == "cancelling"


def test_cancel_of_a_finished_job_is_409(api: Any, owner: dict[str, Any], pg_session_factory: Any) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    with session_scope(pg_session_factory) as session:
        session.get(Job, job_id).status = JobStatus.succeeded
    response = api.post(f"/v1/jobs/{job_id}/cancel", headers=owner["headers"])
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]


def test_learning_progress_is_step_of_steps_over_its_slices(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    """The first slice ended at step 40, the second runs and its last heartbeat counted 12 steps."""
    body = {"dataset_id": owner["dataset_id"], "concepts": {"steps": 100}}
    job_id = api.post("/v1/jobs", headers=owner["headers"], json=body).json()["id"]
    with session_scope(pg_session_factory) as session:
        session.get(Job, job_id).status = JobStatus.learning
        session.add_all(
            [
                Shard(job_id=job_id, seq=1, kind=ShardKind.learn, status=ShardStatus.succeeded, start=0,
                      stop=100, images_done=40, attempts=1),
                Shard(job_id=job_id, seq=3, kind=ShardKind.learn, status=ShardStatus.running, start=40,
                      stop=100, images_done=12, attempts=1),
                Shard(job_id=job_id, seq=2, kind=ShardKind.package, status=ShardStatus.waiting),
            ]
        )  # fmt: skip
    progress = api.get(f"/v1/jobs/{job_id}", headers=owner["headers"]).json()["progress"]
    assert progress["stage"] == "learning" and progress["learning"] == {"step": 52, "steps": 100}
    listed = api.get("/v1/jobs", headers=owner["headers"]).json()["jobs"][0]["progress"]
    assert listed["learning"] == {"step": 52, "steps": 100}


def test_progress_sums_generate_shards(api: Any, owner: dict[str, Any], pg_session_factory: Any) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    now = utcnow()
    with session_scope(pg_session_factory) as session:
        job = session.get(Job, job_id)
        job.status, job.images_total = JobStatus.generating, 15
        session.add_all(
            [
                Shard(job_id=job_id, seq=1, kind=ShardKind.learn, status=ShardStatus.succeeded),
                Shard(
                    job_id=job_id,
                    seq=2,
                    kind=ShardKind.generate,
                    status=ShardStatus.succeeded,
                    class_index=0,
                    class_name="blue jay",
                    start=0,
                    stop=10,
                    images_done=10,
                    images_total=10,
                    attempts=1,
                ),
                Shard(
                    job_id=job_id,
                    seq=3,
                    kind=ShardKind.generate,
                    status=ShardStatus.running,
                    class_index=1,
                    class_name="черный.дрозд",
                    start=0,
                    stop=5,
                    images_done=2,
                    images_total=5,
                    attempts=2,
                    error="worker lost",
                    worker="w1@host",
                    heartbeat_at=now,
                ),
            ]
        )
    progress = api.get(f"/v1/jobs/{job_id}", headers=owner["headers"]).json()["progress"]
    assert {
        k: progress[k] for k in ("stage", "shards_done", "shards_total", "images_done", "images_total")
    } == {
        "stage": "generating",
        "shards_done": 1,
        "shards_total": 2,
        "images_done": 12,
        "images_total": 15,
    }
    assert progress["learning"] == {"step": 1000, "steps": 1000}  # past learning (an old row): all steps
    second = progress["shards"][1]
    assert (
        second["class_name"] == "черный.дрозд"
        and second["attempts"] == 2
        and second["error"] == "worker lost"
    )
    assert second["worker"] == "w1@host" and second["heartbeat_at"] is not None


def _finish_with_archive(pg_session_factory: Any, storage: Any, job_id: str, data: bytes) -> None:
    key = f"jobs/{job_id}/archive.zip"
    storage.put_bytes(key, data)
    with session_scope(pg_session_factory) as session:
        job = session.get(Job, job_id)
        job.status, job.archive_key, job.finished_at = JobStatus.succeeded, key, utcnow()


@pytest.fixture
def queued(api_client_factory: Callable[..., Any], make_api_key: Any) -> tuple[Any, Any, dict[str, str], str]:
    """(client, settings, an owner's headers, the id of its queued job)."""
    client, settings = api_client_factory()
    headers = auth(make_api_key())
    ds = client.post(
        "/v1/datasets", headers=headers, files={"file": ("b.zip", zip_bytes(good_members()))}
    ).json()
    return (
        client,
        settings,
        headers,
        client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"]}).json()["id"],
    )


def test_the_archive_link_is_the_redirects_target(
    queued: tuple[Any, Any, dict[str, str], str], make_api_key: Any, pg_session_factory: Any
) -> None:
    """GET .../archive/link: the signed link as JSON, for a browser to navigate to (the console)."""
    client, settings, headers, job_id = queued
    early = client.get(f"/v1/jobs/{job_id}/archive/link", headers=headers)
    assert early.status_code == 409 and "not ready" in early.json()["detail"]

    _finish_with_archive(pg_session_factory, make_storage(settings), job_id, b"PK fake archive")
    link = client.get(f"/v1/jobs/{job_id}/archive/link", headers=headers)
    assert link.status_code == 200, link.text
    assert link.json()["expires_in"] == settings.presign_ttl
    url = link.json()["url"]
    assert url.startswith(f"http://testserver/v1/objects/jobs/{job_id}/archive.zip?")
    assert client.get(url).content == b"PK fake archive"  # no API key: the signature is the authorisation
    assert client.get(f"/v1/jobs/{job_id}/archive/link", headers=auth(make_api_key())).status_code == 404


def test_archive_is_409_until_it_exists_then_307_to_a_signed_local_link(
    queued: tuple[Any, Any, dict[str, str], str], pg_session_factory: Any
) -> None:
    client, settings, headers, job_id = queued

    early = client.get(f"/v1/jobs/{job_id}/archive", headers=headers)
    assert early.status_code == 409
    assert "not ready" in early.json()["detail"] and "queued" in early.json()["detail"]

    _finish_with_archive(pg_session_factory, make_storage(settings), job_id, b"PK fake archive")
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).json()["archive_ready"] is True
    redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=headers)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"http://testserver/v1/objects/jobs/{job_id}/archive.zip?")

    download = client.get(location)  # no API key: the signature is the authorisation
    assert download.status_code == 200
    assert download.content == b"PK fake archive"
    assert f'filename="diffii-{job_id}.zip"' in download.headers["content-disposition"]

    # Flip the id's last character to a different one, so the tampered path always differs.
    other_id = job_id[:-1] + ("1" if job_id[-1] == "0" else "0")
    tampered_location = location.replace(f"jobs/{job_id}/", f"jobs/{other_id}/")
    assert tampered_location != location
    tampered = client.get(tampered_location)
    assert tampered.status_code == 403
    expired = httpx.URL(location).copy_set_param("expires", "1000")
    assert client.get(str(expired)).status_code == 403


def test_archive_redirects_to_an_s3_presigned_url(
    api_client_factory: Callable[..., Any],
    make_api_key: Any,
    pg_session_factory: Any,
    s3_bucket_settings: dict[str, Any],
) -> None:
    client, settings = api_client_factory(**s3_bucket_settings)
    headers = auth(make_api_key())
    ds = client.post(
        "/v1/datasets", headers=headers, files={"file": ("b.zip", zip_bytes(good_members()))}
    ).json()
    job_id = client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"]}).json()["id"]
    _finish_with_archive(pg_session_factory, make_storage(settings), job_id, b"zip from s3")

    redirect = client.get(f"/v1/jobs/{job_id}/archive", headers=headers)
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(s3_bucket_settings["s3_endpoint_url"]) and "X-Amz-Signature=" in location
    fetched = httpx.get(location)
    assert fetched.status_code == 200 and fetched.content == b"zip from s3"


def test_failed_job_archive_is_409_with_the_status(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    with session_scope(pg_session_factory) as session:
        session.get(Job, job_id).status = JobStatus.failed
    response = api.get(f"/v1/jobs/{job_id}/archive", headers=owner["headers"])
    assert response.status_code == 409
    assert "failed without an archive" in response.json()["detail"]


def test_previews_are_409_until_stored_then_served_to_the_owner_only(
    api_client_factory: Callable[..., Any], make_api_key: Any, pg_session_factory: Any
) -> None:
    client, settings = api_client_factory()
    headers, stranger = auth(make_api_key()), auth(make_api_key())
    ds = client.post(
        "/v1/datasets", headers=headers, files={"file": ("b.zip", zip_bytes(good_members()))}
    ).json()
    job_id = client.post("/v1/jobs", headers=headers, json={"dataset_id": ds["id"]}).json()["id"]
    early = client.get(f"/v1/jobs/{job_id}/preview", headers=headers)
    assert early.status_code == 409 and "queued" in early.json()["detail"]

    classes = [
        {"index": i, "name": name, "images": 1, "generated": 1, "sources": [f"{name}/1.png"]}
        for i, name in enumerate(("cat", "dog"))
    ]
    with session_scope(pg_session_factory) as session:
        session.get(Job, job_id).manifest = {"classes": classes, "images": 2}
    storage = make_storage(settings)
    storage.put_bytes(f"jobs/{job_id}/preview/1.png", b"\x89PNG dog sheet", "image/png")

    listing = client.get(f"/v1/jobs/{job_id}/preview", headers=headers)
    assert listing.status_code == 200
    assert listing.json() == {
        "job_id": job_id,
        "classes": [{"index": 1, "name": "dog", "url": f"/v1/jobs/{job_id}/preview/1"}],
    }
    sheet = client.get(f"/v1/jobs/{job_id}/preview/1", headers=headers)
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"
    assert sheet.content == b"\x89PNG dog sheet"
    assert client.get(f"/v1/jobs/{job_id}/preview/0", headers=headers).status_code == 409
    missing_class = client.get(f"/v1/jobs/{job_id}/preview/2", headers=headers)
    assert missing_class.status_code == 404 and "2 classes" in missing_class.json()["detail"]

    for path in (f"/v1/jobs/{job_id}/preview", f"/v1/jobs/{job_id}/preview/1"):
        assert client.get(path, headers=stranger).status_code == 404
        assert client.get(path).status_code == 401


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (JobStatus.learning, "previews are drawn once every image is generated, when packaging starts"),
        (JobStatus.packaging, "its preview sheets are being drawn (the first step of packaging)"),
        (JobStatus.cancelling, "it is stopping and will have no preview sheets"),
    ],
)
def test_a_preview_409_names_the_jobs_state_and_packaging_serves_drawn_sheets(
    api: Any, owner: dict[str, Any], pg_session_factory: Any, state: JobStatus, reason: str
) -> None:
    job_id = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]}).json()[
        "id"
    ]
    with session_scope(pg_session_factory) as session:
        job = session.get(Job, job_id)
        cat = {"index": 0, "name": "cat", "images": 1, "generated": 1, "sources": ["cat/1.png"]}
        job.status, job.manifest = state, {"classes": [cat], "images": 1}
    for path in (f"/v1/jobs/{job_id}/preview", f"/v1/jobs/{job_id}/preview/0"):
        refused = api.get(path, headers=owner["headers"])
        assert refused.status_code == 409
        assert refused.json()["detail"].startswith(f"job {job_id} is {state.value}: {reason}")

    storage = make_storage(api.app.state.settings)
    storage.put_bytes(f"jobs/{job_id}/preview/0.png", b"\x89PNG cat sheet", "image/png")
    assert api.get(f"/v1/jobs/{job_id}/preview", headers=owner["headers"]).status_code == 200
    sheet = api.get(f"/v1/jobs/{job_id}/preview/0", headers=owner["headers"])
    assert sheet.status_code == 200 and sheet.content == b"\x89PNG cat sheet"


def test_a_status_poll_is_one_checkout_and_three_autocommit_queries(api: Any, owner: dict[str, Any]) -> None:
    """The status poll is the API's hottest path (bench/service.py --load): the key check and the
    job read share one pooled connection, in autocommit (no BEGIN/ROLLBACK round trips), with no
    lazy load per row. A POST keeps its transaction."""
    from sqlalchemy import event

    created = api.post("/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"]})
    assert created.status_code == 202, created.text
    engine = api.app.state.session_factory.kw["bind"]
    checkouts: list[int] = []
    statements: list[tuple[str, bool]] = []

    def on_checkout(*_: Any) -> None:
        checkouts.append(1)

    def on_execute(conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append((statement.split()[0], conn.connection.driver_connection.autocommit))

    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        assert api.get(f"/v1/jobs/{created.json()['id']}", headers=owner["headers"]).status_code == 200
        polled = (len(checkouts), list(statements))
        checkouts.clear()
        statements.clear()
        assert (
            api.post(f"/v1/jobs/{created.json()['id']}/cancel", headers=owner["headers"]).status_code == 200
        )
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine, "before_cursor_execute", on_execute)
    assert polled == (1, [("SELECT", True)] * 3)  # the key, the job, its shards
    assert statements and not any(autocommit for _, autocommit in statements)
