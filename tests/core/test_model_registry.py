"""The model table is built by one rule, for the services' settings and `diffii augment` alike: the built-in
models, with DIFFII_MODELS merged over them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from diffii_core.model_registry import BUILTIN_MODELS, model_table, parse_registry
from services.cli.augment import _models
from services.cli.main import cli
from services.common.settings import CommonSettings


def test_a_json_object_of_names_to_locations_is_the_registry() -> None:
    raw = '{"tiny": "tiny", "sd15": "/models/sd15"}'
    assert parse_registry(raw) == {"tiny": "tiny", "sd15": "/models/sd15"}
    assert parse_registry({"x": "hub/x"}) == {"x": "hub/x"}
    assert parse_registry(None) == parse_registry("  ") == {}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("{not json", "DIFFII_MODELS is not valid JSON"),
        ('["tiny"]', "must be a JSON object of model name -> location"),
        ('{"sd15": 5}', "model 'sd15' must map to 'tiny', a diffusers directory or a hub id, got 5"),
        ('{"sd15": ""}', "model 'sd15' must map to"),
        ('{" ": "tiny"}', "model names must be non-empty strings"),
    ],
)
def test_a_bad_registry_is_refused_naming_what_is_wrong(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match="DIFFII_MODELS") as caught:
        parse_registry(raw)
    assert words in str(caught.value)


def test_services_and_the_cli_refuse_the_same_bad_registry(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DIFFII_MODELS", '{"sd15": 5}')
    with pytest.raises(ValueError, match="model 'sd15' must map to"):
        CommonSettings(_env_file=None, home=tmp_path)
    result = CliRunner().invoke(cli, ["augment", str(tmp_path), "--out", str(tmp_path / "o.zip")])
    assert result.exit_code == 2
    assert "model 'sd15' must map to" in result.output
    assert not (tmp_path / "o.zip").exists()


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "",
        '{"sd15": "/models/sd15"}',
        '{"tiny": "tiny", "sd15": "/models/sd15"}',
        '{"world": "/models/my-world"}',  # a built-in name pointed elsewhere
    ],
)
def test_the_settings_and_the_command_build_the_same_table(
    raw: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    if raw is None:
        monkeypatch.delenv("DIFFII_MODELS", raising=False)
    else:
        monkeypatch.setenv("DIFFII_MODELS", raw)
    table = CommonSettings(_env_file=None, home=tmp_path).models
    assert table == _models(()) == model_table(raw)
    assert set(BUILTIN_MODELS) <= set(table)  # the built-ins are always there
    assert table == {**BUILTIN_MODELS, **parse_registry(raw)}
