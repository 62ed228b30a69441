"""The web console's files: served by the API at /console under a policy that allows only them,
with nothing in them that the policy would refuse or that reaches another origin. What the console
does is tested in a real browser (tests/integration/test_console.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from services.api.console_site import FILES
from services.common.statuses import TERMINAL_JOB_STATUSES


def test_home_redirects_to_the_console(api: Any) -> None:
    home = api.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "/console/"
    assert api.get("/console", follow_redirects=True).url.path == "/console/"


def test_console_files_carry_a_policy_that_allows_only_themselves(api: Any) -> None:
    for path in ("/console/", "/console/app.js", "/console/console.css", "/console/favicon.svg"):
        r = api.get(path)
        assert r.status_code == 200, path
        policy = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'self'" and policy["script-src"] == "'self'"
        assert policy["connect-src"] == "'self'" and policy["img-src"] == "'self' blob:"
        assert r.headers["x-content-type-options"] == "nosniff"
    assert api.get("/console/app.js").headers["content-type"].startswith("text/javascript")
    assert api.get("/console/nothing.js").status_code == 404
    # The API's own answers are not pages: no policy there.
    assert "content-security-policy" not in api.get("/healthz").headers


def test_console_files_hold_no_inline_script_and_no_outside_address() -> None:
    html = (FILES / "index.html").read_text()
    tags = re.findall(r"<script\b[^>]*>", html)
    assert tags and all("src=" in tag for tag in tags), "inline script in index.html"
    assert not re.search(r"\son[a-z]+=|\sstyle=", html), "inline handler or style in index.html"
    for file in sorted(Path(FILES).iterdir()):
        text = file.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), file.name
        assert "innerHTML" not in text and "eval(" not in text and "new Function" not in text, file.name


def test_the_served_job_body_is_where_the_console_reads_it(api: Any) -> None:
    """form.js builds the job form from this schema: a `method` choice, as an enum or per member."""
    doc = api.get("/openapi.json").json()
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    while "$ref" in body:
        body = doc["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    members = body.get("oneOf", []) + body.get("anyOf", [])
    methods = body.get("properties", {}).get("method", {}).get("enum") or [
        m for m in members if "$ref" in m or "method" in m.get("properties", {})
    ]
    assert methods, body
    assert doc["components"]["schemas"]["JobStatus"]["enum"]  # the list's status filter


def test_the_served_job_status_names_exactly_the_terminal_statuses(api: Any) -> None:
    """app.js reads which statuses a job never leaves from the schema, and keeps no list of its own."""
    status = api.get("/openapi.json").json()["components"]["schemas"]["JobStatus"]
    assert status["x-terminal"] == [s.value for s in TERMINAL_JOB_STATUSES]
    assert set(status["x-terminal"]) == {"succeeded", "failed", "cancelled"} <= set(status["enum"])
    app = (Path(FILES) / "app.js").read_text()
    assert '"succeeded", "failed", "cancelled"' not in app and '"x-terminal"' in app


def test_the_console_reads_learning_progress_where_the_api_serves_it(api: Any) -> None:
    """The job page's bar counts learning's steps from `progress.learning` (step of steps)."""
    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    learning = schemas["ProgressOut"]["properties"]["learning"]
    refs = [m["$ref"].rsplit("/", 1)[1] for m in learning.get("anyOf", [learning]) if "$ref" in m]
    assert refs == ["LearningOut"] and set(schemas["LearningOut"]["properties"]) == {"step", "steps"}
    app = (FILES / "app.js").read_text()
    assert "p.learning" in app and "learning.step" in app and "learning.steps" in app
