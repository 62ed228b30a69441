"""The web console in a real browser (Debian's Chromium, driven by Playwright) against a running
`diffii up` with its worker: what a person with an API key does, and what they see when things go
wrong. Screenshots of the job and new-job pages go to $DIFFII_CONSOLE_SCREENSHOTS when it is set
(scripts/console_screenshots.sh writes docs/console-*.png that way)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.dataset_builders import png, zip_bytes
from tests.integration.conftest import CLI, EXPECTED_IMAGES, JOB_TIMEOUT, ROOT, Up, running_up
from tests.service_helpers import auth, wait_until

JOB_MS = JOB_TIMEOUT * 1000
TERMINAL_BADGE = ", ".join(f'#summary [data-status="{s}"]' for s in ("succeeded", "failed", "cancelled"))
# Few steps, as the other service tests use: this is about the console, not the images.
FORM = {"expansion": "2", "seed": "7", "inference_steps": "8", "inversion_steps": "8", "concepts.steps": "10"}
LONG = {**FORM, "concepts.steps": "20000", "concepts.batch_size": "1"}  # runs until cancelled


def chromium() -> str:
    path = os.environ.get("DIFFII_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("no Chromium: run scripts/ensure_browser.sh (make test does)")
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    with running_up(tmp_path_factory.mktemp("console")) as u:
        yield u


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, service: Up) -> Iterator[Page]:
    """A fresh tab (its own session storage); at the end, no request left the API's origin and
    the Content-Security-Policy refused nothing."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    foreign: list[str] = []
    refused: list[str] = []
    tab.on("request", lambda r: r.url.startswith((service.url, "blob:")) or foreign.append(r.url))
    tab.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    tab.on("pageerror", lambda e: refused.append(f"script error: {e}"))
    yield tab
    context.close()
    assert not foreign, f"requests outside the API: {foreign}"
    assert not refused, refused


def test_the_api_docs_render_under_the_console_policy(page: Page, service: Up) -> None:
    page.goto(f"{service.url}/redoc")  # sent on to /docs
    expect(page.locator(".opblock-summary-path", has_text="/v1/jobs/{job_id}").first).to_be_visible()
    assert page.url == f"{service.url}/docs"
    # The page fixture then checks: no request left the API, the policy refused nothing.


def sign_in(page: Page, service: Up, key: str) -> None:
    page.goto(f"{service.url}/")
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#jobs")).to_be_visible()


def upload(page: Page, archive: Path) -> None:
    page.goto(page.url.split("#")[0] + "#/new")
    page.set_input_files("#dataset-file", str(archive))


def drop(page: Page, archive: Path) -> None:
    """Drop a file on the upload zone, as a drag from the desktop does."""
    page.goto(page.url.split("#")[0] + "#/new")
    transfer = page.evaluate_handle(
        "([name, bytes]) => { const t = new DataTransfer();"
        " t.items.add(new File([new Uint8Array(bytes)], name)); return t; }",
        [archive.name, list(archive.read_bytes())],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def fill(page: Page, values: dict[str, str]) -> None:
    for path, value in values.items():
        page.fill(f'[data-path="{path}"]', value)


def submit(page: Page) -> str:
    page.click("#submit")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    return page.url.rsplit("/", 1)[1]


def job_api(service: Up, key: str, job_id: str) -> httpx.Response:
    return httpx.get(f"{service.url}/v1/jobs/{job_id}", headers=auth(key), timeout=30)


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("DIFFII_CONSOLE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder, name)), full_page=True)


def check_archive(path: Path) -> dict[str, Any]:
    """The checks scripts/demo.sh makes: unique images, one metadata line each, the job's record."""
    with zipfile.ZipFile(path) as zf:
        images = [n for n in zf.namelist() if n.endswith(".png")]
        lines = [json.loads(line) for line in zf.read("metadata.jsonl").decode().splitlines()]
        job = json.loads(zf.read("job.json"))
    assert images and len(images) == len(set(images)) == EXPECTED_IMAGES
    assert sorted(line["file_name"] for line in lines) == sorted(images)
    return job


def test_sign_in_upload_submit_watch_preview_download_cancel_delete(
    page: Page, service: Up, tmp_path: Path
) -> None:
    from diffii_core.sample_data import write_sample_archive

    key = service.key("console-flow")
    sign_in(page, service, key)
    assert page.evaluate("sessionStorage.getItem('diffii.apiKey')") == key
    assert key not in page.url

    # The upload's structural check answers at once.
    upload(page, write_sample_archive(tmp_path / "sample.zip"))
    expect(page.locator("#dataset-result")).to_contain_text("4 classes, 12 images found")
    expect(page.locator("#upload-progress")).to_have_attribute("value", "1")
    # The form is the served schema: a field's description, default and range are beside it.
    expansion = page.locator('[data-field="expansion"]')
    expect(expansion).to_contain_text("synthetic images per real image of a class")
    expect(expansion).to_contain_text("default: 5")
    expect(expansion).to_contain_text("range: (0, 100]")
    expect(page.locator('[data-field="concepts.steps"]')).to_be_visible()

    # The server's 422 is shown beside the field it names.
    fill(page, {**FORM, "expansion": "500"})
    page.click("#submit")
    expect(page.locator('[data-error-for="expansion"]')).to_contain_text("less than or equal to 100")
    expect(page.locator('[data-field="expansion"]')).to_have_class(re.compile("invalid"))
    assert page.url.endswith("#/new")

    fill(page, FORM)
    screenshot(page, "console-new-job.png")
    # A double click sends the same Idempotency-Key twice: one job.
    posts: list[str | None] = []
    page.on(
        "request",
        lambda r: (
            r.method == "POST"
            and r.url.endswith("/v1/jobs")
            and posts.append(r.headers.get("idempotency-key"))
        ),
    )
    page.dblclick("#submit")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    first = page.url.rsplit("/", 1)[1]
    listed = httpx.get(f"{service.url}/v1/jobs", headers=auth(key), timeout=30).json()["jobs"]
    assert [job["id"] for job in listed] == [first]
    assert len(posts) == 2 and posts[0] == posts[1] and posts[0], posts

    # Before the archive exists, the API's 409 says so.
    page.click("#download")
    expect(page.locator("#action-result")).to_contain_text("the archive is not ready")

    page.wait_for_selector(TERMINAL_BADGE, timeout=JOB_MS)
    expect(page.locator('#summary [data-status="succeeded"]')).to_be_visible()
    expect(page.locator('#timeline [data-stage-state="package"]')).to_have_text("succeeded")
    expect(page.locator("#dataset-classes tbody tr")).to_have_count(4)
    expect(page.locator("#params")).to_contain_text("diff-ii")
    sheet = page.locator("#previews figure img").first
    expect(sheet).to_be_visible()
    expect(page.locator("#previews figure")).to_have_count(4)  # one sheet per class
    wait_until(lambda: sheet.evaluate("img => img.complete && img.naturalWidth > 0"), 30, "a preview sheet")
    screenshot(page, "console-job.png")

    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "archive.zip"
    download.value.save_as(saved)
    assert check_archive(saved)["params"]["seed"] == 7

    # The list shows it, and its filter works.
    page.goto(f"{service.url}/console/#/jobs")
    row = page.locator(f'#jobs tr[data-job="{first}"]')
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text(f"{EXPECTED_IMAGES} / {EXPECTED_IMAGES}")
    page.select_option("#status-filter", "failed")
    expect(row).to_have_count(0)
    page.select_option("#status-filter", "succeeded")
    expect(row).to_have_count(1)

    # A second job, cancelled from its page.
    upload(page, write_sample_archive(tmp_path / "again.zip"))
    expect(page.locator("#dataset-result")).to_contain_text("12 images found")
    fill(page, LONG)
    second = submit(page)
    assert second != first
    page.click("#cancel")
    expect(page.locator('#summary [data-status="cancelled"]')).to_be_visible(timeout=JOB_MS)
    expect(page.locator("#cancel")).to_be_disabled()

    # The first job deleted, after the confirmation.
    page.goto(f"{service.url}/console/#/jobs/{first}")
    expect(page.locator('#summary [data-status="succeeded"]')).to_be_visible()
    dialogs: list[str] = []

    def accept(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.click("#delete")
    page.wait_for_url(re.compile(r"#/jobs$"))
    assert dialogs and first in dialogs[0]
    assert job_api(service, key, first).status_code == 404
    expect(page.locator(f'#jobs tr[data-job="{second}"]')).to_be_visible()
    expect(page.locator(f'#jobs tr[data-job="{first}"]')).to_have_count(0)


def test_a_refused_upload_and_a_failed_job_say_what_is_wrong(page: Page, service: Up, tmp_path: Path) -> None:
    key = service.key("console-failures")
    sign_in(page, service, key)

    (tmp_path / "notes.zip").write_bytes(b"this is not an archive")
    upload(page, tmp_path / "notes.zip")
    expect(page.locator("#dataset-result")).to_contain_text("The dataset was refused")
    expect(page.locator("#dataset-result")).to_contain_text("notes.zip")

    # Class b's one image has a PNG's signature but is cut short: the upload takes it, decoding fails.
    broken = {"a/1.png": png(40, (10, 40, 190)), "a/2.png": png(40, (60, 40, 140)), "b/1.png": png(40)[:60]}
    (tmp_path / "broken.zip").write_bytes(zip_bytes(broken))
    drop(page, tmp_path / "broken.zip")
    expect(page.locator("#dataset-result")).to_contain_text("2 classes, 3 images found")
    fill(page, FORM)
    submit(page)
    expect(page.locator('#summary [data-status="failed"]')).to_be_visible(timeout=JOB_MS)
    # The message comes first, before the actions and the stages.
    first_block = page.locator("#view > *:nth-child(2)")
    expect(first_block).to_have_attribute("id", "job-alerts")
    expect(first_block).to_contain_text("This job failed")
    expect(first_block).to_contain_text("class 'b' has no usable image")
    expect(page.locator('#timeline [data-stage-state="prepare"]')).to_have_text("failed")
    page.click("#download")
    expect(page.locator("#action-result")).to_contain_text("ended failed without an archive")


def test_sign_out_forgets_the_key_and_a_revoked_key_sends_the_tab_back_to_sign_in(
    page: Page, service: Up
) -> None:
    key = service.key("console-revoked")
    sign_in(page, service, key)
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('diffii.apiKey')") is None
    page.goto(f"{service.url}/console/#/jobs")  # a signed-out tab shows no page but sign-in
    expect(page.locator("#sign-in")).to_be_visible()

    sign_in(page, service, key)
    prefix = key.split("_")[1]
    subprocess.run(
        [sys.executable, "-c", CLI, "admin", "revoke-key", prefix],
        env=service.env, cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    # The job list's next poll (every few seconds) meets the 401.
    expect(page.locator("#sign-in")).to_be_visible(timeout=60_000)
    expect(page.locator("#sign-in-error")).to_contain_text("invalid or revoked API key")
    assert page.evaluate("sessionStorage.getItem('diffii.apiKey')") is None
    expect(page.locator("#nav")).to_be_hidden()

    page.fill("#api-key", key)  # the same key again is refused at sign-in
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-error")).to_contain_text("invalid or revoked API key")


def test_watching_a_job_survives_an_api_restart(page: Page, service: Up, tmp_path: Path) -> None:
    from diffii_core.sample_data import write_sample_archive

    key = service.key("console-restart")
    sign_in(page, service, key)
    upload(page, write_sample_archive(tmp_path / "sample.zip"))
    expect(page.locator("#dataset-result")).to_contain_text("12 images found")
    fill(page, LONG)
    job_id = submit(page)
    expect(page.locator("#summary")).to_contain_text("stage:")

    state = json.loads((service.home / "supervisor.json").read_text())
    api_pid = int(state["children"]["api"]["pid"])
    os.kill(api_pid, signal.SIGKILL)
    expect(page.locator("#connection")).to_contain_text("Connection lost", timeout=30_000)

    def restarted() -> bool:
        try:
            return service.readyz()[0] == 200
        except httpx.TransportError:
            return False

    wait_until(restarted, 120, "the supervisor to restart the API", interval=0.3)
    # The page was never reloaded: its own polling finds the API back and shows what changed.
    r = httpx.post(f"{service.url}/v1/jobs/{job_id}/cancel", headers=auth(key), timeout=30)
    assert r.status_code == 200, r.text
    expect(page.locator("#connection")).to_be_hidden(timeout=60_000)
    expect(page.locator('#summary [data-status="cancelled"]')).to_be_visible(timeout=JOB_MS)


def test_the_job_form_follows_a_schema_with_one_body_per_method(page: Page, service: Up) -> None:
    """Should the served schema become a oneOf of one body per method, each method shows its
    own fields only. The served document is rewritten that way in the browser; the API still
    answers everything else."""
    key = service.key("console-schema")
    doc = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    flat = schemas["JobRequest"]["properties"]
    own = {"diff-ii": ["split_ratio", "inversion_steps"], "diff-mix": ["kappa", "gamma"]}
    for method, fields in own.items():
        shared = {k: v for k, v in flat.items() if k not in {f for fs in own.values() for f in fs}}
        schemas[f"Job_{method}"] = {
            "type": "object",
            "properties": {**shared, **{f: flat[f] for f in fields}, "method": {"const": method}},
        }
    schemas["JobRequest"] = {
        "oneOf": [{"$ref": f"#/components/schemas/Job_{m}"} for m in own],
        "discriminator": {"propertyName": "method"},
    }
    page.route("**/openapi.json", lambda route: route.fulfill(json=doc))

    sign_in(page, service, key)
    page.goto(f"{service.url}/console/#/new")
    expect(page.locator("#field-method option")).to_have_text(["diff-ii", "diff-mix"])
    expect(page.locator('[data-field="split_ratio"]')).to_be_visible()
    expect(page.locator('[data-field="kappa"]')).to_have_count(0)
    fill(page, {"expansion": "3"})
    page.select_option("#field-method", "diff-mix")
    expect(page.locator('[data-field="kappa"]')).to_contain_text("range: (0, 1]")
    expect(page.locator('[data-field="split_ratio"]')).to_have_count(0)
    assert page.input_value('[data-path="expansion"]') == "3"  # shared fields keep what was typed


def test_the_job_form_follows_enums_given_as_references(page: Page, service: Up) -> None:
    """Should the flat body's enums become schemas of their own (`$ref` with the field's default
    and description beside it), the form reads them the same."""
    key = service.key("console-enums")
    doc = httpx.get(f"{service.url}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    props = schemas["JobRequest"]["properties"]
    for field, name in (("method", "Method"), ("sampler", "Sampler")):
        inline = props[field]
        schemas[name] = {"type": "string", "enum": inline["enum"], "title": name}
        props[field] = {
            "$ref": f"#/components/schemas/{name}",
            "default": inline["default"],
            "description": inline["description"],
        }
    page.route("**/openapi.json", lambda route: route.fulfill(json=doc))

    sign_in(page, service, key)
    page.goto(f"{service.url}/console/#/new")
    expect(page.locator("#field-method option")).to_have_text(schemas["Method"]["enum"])
    expect(page.locator("#field-method")).to_have_value("diff-ii")
    sampler = page.locator('[data-field="sampler"]')
    expect(sampler.locator("label")).to_have_text("Sampler")
    expect(sampler).to_contain_text("denoising sampler; default: the method")
    expect(sampler.locator("option")).to_have_text(["default (ddim)", "ddim", "dpm-solver++"])


BIG_SEED = "7691863025641212835"  # over 2**53: a JavaScript number would make it 7691863025641213000


def test_a_63_bit_seed_is_submitted_and_shown_exactly(page: Page, service: Up, tmp_path: Path) -> None:
    from diffii_core.sample_data import write_sample_archive

    key = service.key("console-seed")
    sign_in(page, service, key)
    upload(page, write_sample_archive(tmp_path / "sample.zip"))
    expect(page.locator("#dataset-result")).to_contain_text("12 images found")
    fill(page, {**LONG, "seed": BIG_SEED})
    bodies: list[str] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and r.url.endswith("/v1/jobs") and bodies.append(r.post_data or ""),
    )
    job_id = submit(page)
    try:
        assert json.loads(bodies[0])["seed"] in (BIG_SEED, int(BIG_SEED)), bodies
        assert job_api(service, key, job_id).json()["params"]["seed"] == BIG_SEED
        expect(page.locator('#params dt:text-is("seed") + dd')).to_have_text(BIG_SEED)
    finally:
        httpx.post(f"{service.url}/v1/jobs/{job_id}/cancel", headers=auth(key), timeout=30)


RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: unisolated, it reverses the text after it


def test_class_names_are_isolated_from_bidirectional_text(page: Page, service: Up, tmp_path: Path) -> None:
    key = service.key("console-bidi")
    sign_in(page, service, key)
    names = [f"evil{RLO}gpj.exe", "plain"]
    members = {f"{names[0]}/1.png": png(40, (10, 40, 190)), f"{names[1]}/1.png": png(40, (60, 40, 140))}
    (tmp_path / "bidi.zip").write_bytes(zip_bytes(members))
    upload(page, tmp_path / "bidi.zip")
    result = page.locator("#dataset-result")
    expect(result).to_contain_text("2 classes, 2 images found")
    isolated = result.locator("bdi")
    expect(isolated).to_have_text(["bidi.zip", *names])
    # The override stays inside its name: the next class's name is still drawn to its right.
    first, second = (isolated.nth(i).bounding_box() for i in (1, 2))
    assert first and second and second["x"] > first["x"] + first["width"], (first, second)


def test_a_download_with_s3_storage_navigates_to_the_signed_link(browser: Browser, cluster: Any) -> None:
    """With S3 the archive's signed link is the bucket's origin, which the console's policy keeps its
    own requests from (connect-src 'self'): the console asks the API for the link and navigates there."""
    from services.common import keys as object_keys
    from services.common.db import session_scope
    from services.common.models import Job, JobStatus, utcnow

    url = cluster.start_api()
    key = cluster.new_key()
    dataset_id = cluster.upload_sample(key)
    job_id = cluster.submit(key, dataset_id)  # no worker: the archive is put in place by hand
    archive = object_keys.archive(job_id)
    cluster.storage.put_bytes(archive, b"PK archive from the bucket")
    with session_scope(cluster.sessions) as session:
        job = session.get(Job, job_id)
        job.status, job.archive_key, job.finished_at = JobStatus.succeeded, archive, utcnow()
    link = httpx.get(f"{url}/v1/jobs/{job_id}/archive/link", headers=auth(key), timeout=30).json()["url"]
    bucket_origin = re.match(r"https?://[^/]+", link)
    assert bucket_origin and not link.startswith(url)

    context = browser.new_context(accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    outside: list[tuple[str, bool]] = []
    refused: list[str] = []
    tab.on("request", lambda r: r.url.startswith(url) or outside.append((r.url, r.is_navigation_request())))
    tab.on("console", lambda m: "Content Security Policy" in m.text and refused.append(m.text))
    tab.on("pageerror", lambda e: refused.append(f"script error: {e}"))
    try:
        tab.goto(f"{url}/")
        tab.fill("#api-key", key)
        tab.click("#sign-in button[type=submit]")
        expect(tab.locator("#jobs")).to_be_visible()
        tab.goto(f"{url}/console/#/jobs/{job_id}")
        expect(tab.locator('#summary [data-status="succeeded"]')).to_be_visible()
        with tab.expect_download() as download:
            tab.click("#download")
        assert Path(download.value.path()).read_bytes() == b"PK archive from the bucket"
        expect(tab.locator("#action-result")).to_contain_text("The download has started")
    finally:
        context.close()
    assert outside and all(navigation for _, navigation in outside), outside
    assert all(u.startswith(bucket_origin[0]) for u, _ in outside), outside
    assert not refused, refused
