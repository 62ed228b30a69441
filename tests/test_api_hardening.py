"""Requests that could cost the API more than they should, or carry what must not reach a prompt:
oversized bodies, huge or non-finite values, strings for numbers, control characters, too many
class prompts, malformed path ids. Each is refused with an answer naming what is wrong, on the
in-process app over the test Postgres, Redis and a local store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.dataset_builders import good_members, png, zip_bytes
from tests.service_helpers import auth

CAP = 4096


@pytest.fixture
def capped(api_client_factory: Callable[..., Any], make_api_key: Any) -> dict[str, Any]:
    """An API with a 4 KiB JSON cap and at most 3 classes, and an owner with one dataset."""
    client, _settings = api_client_factory(max_json_bytes=CAP, dataset_limits={"max_classes": 3})
    headers = auth(make_api_key())
    files = {"file": ("b.zip", zip_bytes(good_members()))}
    upload = client.post("/v1/datasets", headers=headers, files=files)
    assert upload.status_code == 201, upload.text
    return {"client": client, "headers": headers, "dataset_id": upload.json()["id"]}


def _post_job(capped: dict[str, Any], **kwargs: Any) -> Any:
    return capped["client"].post("/v1/jobs", headers=capped["headers"], **kwargs)


def _post_raw(capped: dict[str, Any], content: Any) -> Any:
    headers = {**capped["headers"], "content-type": "application/json"}
    return capped["client"].post("/v1/jobs", headers=headers, content=content)


def test_a_body_declared_over_the_cap_is_413_naming_the_limit_and_the_size(capped: dict[str, Any]) -> None:
    body = b'{"dataset_id": "' + b"a" * 10_000 + b'"}'
    response = _post_raw(capped, body)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert f"{len(body):,} bytes" in detail and f"{CAP:,} bytes (max_json_bytes)" in detail


def test_a_streamed_body_without_length_is_cut_at_the_cap(capped: dict[str, Any]) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"metaclass": "'
        for _ in range(1000):  # 1 MB if it were all read
            sent.append(1)
            yield b"x" * 1000
        yield b'"}'

    response = _post_raw(capped, chunks())
    assert response.status_code == 413, response.text
    assert "has at least" in response.json()["detail"] and "max_json_bytes" in response.json()["detail"]


def test_a_422_quotes_only_a_short_prefix_of_the_refused_value(capped: dict[str, Any]) -> None:
    huge = "y" * 3000  # under the cap, 30 times the echo
    response = _post_job(capped, json={"dataset_id": capped["dataset_id"], "metaclass": huge})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "metaclass"]
    assert error["input"] == "y" * 100 + "…"
    assert len(response.content) < 1000


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_a_non_finite_number_is_422_not_500(capped: dict[str, Any], number: str) -> None:
    body = f'{{"dataset_id": "{capped["dataset_id"]}", "expansion": {number}}}'
    response = _post_raw(capped, body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "expansion"] and "finite" in error["msg"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"expansion": "5"}, ["body", "expansion"]),
        ({"inference_steps": "8"}, ["body", "inference_steps"]),
        ({"concepts": {"learning_rate": "1e-4"}}, ["body", "concepts", "learning_rate"]),
        ({"resize_to_source": 1}, ["body", "resize_to_source"]),
        ({"seed": "7.0"}, ["body", "seed"]),  # decimal digits are a seed (docs/service.md); this is not
    ],
)
def test_a_string_is_not_a_number(capped: dict[str, Any], change: dict[str, Any], loc: list[str]) -> None:
    response = _post_job(capped, json={"dataset_id": capped["dataset_id"], **change})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [loc]


@pytest.mark.parametrize(
    ("change", "field", "named"),
    [
        ({"metaclass": "bi\x00rd"}, "metaclass", "U+0000"),
        ({"metaclass": "bird\n"}, "metaclass", "U+000A"),
        ({"suffixes": ["in a park", "at \x1b[31mnight"]}, "suffixes", "U+001B"),
        ({"class_prompts": {"blue jay": "jay\r"}}, "class_prompts", "U+000D"),
        ({"class_prompts": {"blue\tjay": "jay"}}, "class_prompts", "U+0009"),
        ({"class_prompts": {"blue jay": "jay\x85"}}, "class_prompts", "U+0085"),
    ],
)
def test_text_with_a_control_character_is_422_naming_it(
    capped: dict[str, Any], change: dict[str, Any], field: str, named: str
) -> None:
    response = _post_job(capped, json={"dataset_id": capped["dataset_id"], **change})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:2] == ["body", field] and named in error["msg"]


def test_a_dataset_uri_with_a_control_character_is_422(api_client_factory: Any, make_api_key: Any) -> None:
    client, _ = api_client_factory(allowed_dataset_buckets=["data"])
    response = client.post(
        "/v1/jobs", headers=auth(make_api_key()), json={"dataset_uri": "s3://data/a\nb.zip"}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", "dataset_uri"]


def test_class_prompts_are_at_most_max_classes(capped: dict[str, Any]) -> None:
    prompts = {f"class {i}": f"thing {i}" for i in range(4)}
    response = _post_job(capped, json={"dataset_id": capped["dataset_id"], "class_prompts": prompts})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "class_prompts"]
    assert "4 class prompts, over the limit of 3 (max_classes)" in error["msg"]
    del prompts["class 3"]
    assert (
        _post_job(capped, json={"dataset_id": capped["dataset_id"], "class_prompts": prompts}).status_code
        == 202
    )


@pytest.mark.parametrize("path", ["/v1/datasets/{bad}", "/v1/jobs/{bad}", "/v1/jobs/{bad}/archive"])
def test_a_path_id_outside_its_pattern_is_422(capped: dict[str, Any], path: str) -> None:
    response = capped["client"].get(path.format(bad="a.b%20c"), headers=capped["headers"])
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "path"


def test_an_uploaded_class_folder_named_with_a_control_character_is_skipped(capped: dict[str, Any]) -> None:
    members = {"cat/1.png": png(), "bad\x07bell/1.png": png()}
    response = capped["client"].post(
        "/v1/datasets", headers=capped["headers"], files={"file": ("c.zip", zip_bytes(members))}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert [c["name"] for c in dataset["classes"]] == ["cat"]
    (skipped,) = dataset["skipped"]
    assert skipped["path"] == "bad\x07bell/1.png" and "control character U+0007" in skipped["reason"]


def test_the_served_job_request_is_a_plain_object_saying_exactly_one_dataset(
    api_client_factory: Callable[..., Any],
) -> None:
    import jsonschema

    for buckets in ([], ["data"]):
        client, _ = api_client_factory(allowed_dataset_buckets=buckets, dataset_limits={"max_classes": 3})
        doc = client.get("/openapi.json").json()
        request = doc["components"]["schemas"]["JobRequest"]
        assert request["type"] == "object" and "oneOf" not in request and "anyOf" not in request
        assert request["properties"]["class_prompts"]["anyOf"][0]["maxProperties"] == 3
        # The request's own $refs point into the document's components.
        schema = jsonschema.Draft202012Validator({**request, "components": doc["components"]})
        one = {"dataset_id": "abc"}
        assert schema.is_valid(one) and not schema.is_valid({})
        assert not schema.is_valid({**one, "class_prompts": {"a\nb": "x"}})
        if buckets:
            uri = {"dataset_uri": "s3://data/x.zip"}
            assert schema.is_valid(uri) and not schema.is_valid({**one, **uri})
            assert not schema.is_valid({"dataset_uri": "s3://data/a\nb.zip"})
