"""The docs cannot drift: the parameters page is the generator's output, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scripts import params_doc

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
# [text](target) and ![alt](target), the target up to a space, a closing parenthesis or a fragment.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s#>]*)[^)]*\)")


def test_parameters_page_is_generated_from_the_code() -> None:
    committed = params_doc.PAGE.read_text(encoding="utf-8")
    assert committed == params_doc.render(), f"docs/parameters.md is stale: run `{params_doc.COMMAND}`"


def test_parameters_page_names_every_field_and_method() -> None:
    page = params_doc.render()
    for name in params_doc.JobParams.model_fields:
        if name != "concepts":
            assert f"| `{name}` |" in page
    for name in params_doc.ConceptParams.model_fields:
        assert f"| `concepts.{name}` |" in page
    for name in params_doc.METHODS:
        assert f"| `{name}` |" in page


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # code is not a link
    return [t for t in LINK.findall(text) if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_link_pattern_finds_links_and_skips_urls(tmp_path: Path) -> None:
    page = tmp_path / "x.md"
    page.write_text(
        '[a](docs/a.md) ![b](img/b.png "title") [c](https://example.com) [d](#anchor) '
        "[e](f.md#part)\n```\n[g](in-code.md)\n```\n",
        encoding="utf-8",
    )
    assert relative_links(page) == ["docs/a.md", "img/b.png", "f.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(page: Path) -> None:
    missing = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
