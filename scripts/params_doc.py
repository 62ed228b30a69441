"""Write docs/parameters.md from `JobParams`, the presets and the method registry.

    python -m scripts.params_doc --write    # regenerate the page
    python -m scripts.params_doc --check    # exit 1 when the committed page is stale

The page is generated so it cannot drift from the code: tests/test_docs.py fails when it differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from diffii_core.candidates import CANDIDATES
from diffii_core.methods import METHODS
from diffii_core.methods.spec import MethodSpec
from diffii_core.params import (
    AUTO_SETS,
    AUTO_UNUSED,
    MODEL_PRESETS,
    PRESETS,
    QUICK_MODELS,
    ConceptParams,
    JobParams,
)
from services.cli.options import CONCEPT_FIELDS, job_options

PAGE = Path(__file__).resolve().parent.parent / "docs" / "parameters.md"
COMMAND = "python -m scripts.params_doc --write"

# Which methods read a field; a field not named here applies to every method.
APPLIES: dict[str, Callable[[MethodSpec], bool]] = {
    "split_ratio": lambda m: m.inversion,
    "suffixes": lambda m: m.inversion,
    "inversion_steps": lambda m: m.inversion,
    "inversion_schedule": lambda m: m.inversion,
    "fill_pool_to": lambda m: m.inversion,
    "image_geometry": lambda m: m.inversion or m.references,
    "strength": lambda m: m.references,
    "resize_to_source": lambda m: m.references,
    "kappa": lambda m: m.label == "soft",
    "gamma": lambda m: m.label == "soft",
    "class_prompts": lambda m: m.prompt == "name",
    "filter_attempts": lambda m: m.classifier,
    "concepts": lambda m: m.needs_concepts,
    "concepts.lora_rank": lambda m: m.concepts == "lora+tokens",
    "concepts.lora_learning_rate": lambda m: m.concepts == "lora+tokens",
}


def cli_flags() -> dict[str, str]:
    """Field path -> the `diffii augment` / `diffii submit` option that sets it."""

    @click.command()
    @job_options
    def probe(**_: Any) -> None: ...

    flags: dict[str, str] = {}
    for param in probe.params:
        name = param.name or ""
        field = "suffixes" if name == "suffixes_file" else name
        if name in CONCEPT_FIELDS:
            field = f"concepts.{CONCEPT_FIELDS[name]}"
        opt = max(param.opts, key=len)
        flags[field] = f"{flags[field]}, `{opt}`" if field in flags else f"`{opt}`"
    return flags


def _type(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        return f"map of string to {_type(values)}" if isinstance(values, dict) else "object"
    if "$ref" in schema:
        return "object (below)"
    return str(kind or "any")


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range(schema: dict[str, Any]) -> str:
    parts: list[str] = []
    for sub in [schema, *schema.get("anyOf", [])]:
        low = (">= ", sub["minimum"]) if "minimum" in sub else None
        low = ("> ", sub["exclusiveMinimum"]) if "exclusiveMinimum" in sub else low
        high = sub.get("maximum")
        if low and high is not None:
            parts.append(f"{'[' if low[0] == '>= ' else '('}{_num(low[1])}, {_num(high)}]")
        elif low:
            parts.append(f"{low[0]}{_num(low[1])}")
        elif high is not None:
            parts.append(f"<= {_num(high)}")
        if "multipleOf" in sub:
            parts.append(f"multiple of {sub['multipleOf']}")
        if "minLength" in sub or "maxLength" in sub:
            parts.append(f"{sub.get('minLength', 0)} to {sub.get('maxLength', '∞')} characters")
        if "minItems" in sub or "maxItems" in sub:
            parts.append(f"{sub.get('minItems', 0)} to {sub.get('maxItems', '∞')} items")
        items = sub.get("items")
        if isinstance(items, dict) and sub.get("type") == "array":
            inner = _range(items)
            if inner:
                parts.append(f"each {inner}")
    return "; ".join(parts)


def _default(value: Any) -> str:
    if value is None:
        return "*see description*"
    return f"`{json.dumps(value)}`"


def field_rows(
    model: type[BaseModel], schema: dict[str, Any], prefix: str, flags: dict[str, str]
) -> list[str]:
    rows = []
    props = schema["properties"]
    for name, info in model.model_fields.items():
        if name == "concepts":
            continue
        path = f"{prefix}{name}"
        prop = props[name]
        default = info.get_default(call_default_factory=True)
        description = (info.description or "").replace("|", "\\|")
        rows.append(
            f"| `{path}` | {flags.get(path, '–')} | {_type(prop)} | {_default(default)} | "
            f"{_range(prop) or '–'} | {description} |"
        )
    return rows


def applies(spec: MethodSpec, path: str) -> bool:
    rule = APPLIES.get(path) or APPLIES.get(path.split(".")[0])
    return rule is None or bool(rule(spec))


def method_table() -> list[str]:
    rows = [
        "| method | what it does | concepts | tokens a class | sampler | strength | label "
        "| method-specific fields it reads |",
        "|---|---|---|---|---|---|---|---|",
    ]
    specific = [p for p in APPLIES if p != "concepts" and "." not in p]
    for name, spec in METHODS.items():
        fields = ", ".join(f"`{p}`" for p in specific if applies(spec, p)) or "–"
        concepts = {"none": "none", "lora+tokens": "LoRA + tokens", "tokens": "tokens only"}[spec.concepts]
        tokens = str(spec.tokens_per_class) if spec.tokens_per_class else "the model's, else 1"
        if not spec.needs_concepts:
            tokens = "–"
        strength = ", ".join(f"{s:g}" for s in spec.strengths)
        rows.append(
            f"| `{name}` | {spec.summary} | {concepts} | {tokens} | `{spec.sampler}` | {strength} | "
            f"{spec.label} | {fields} |"
        )
    return rows


def defaults_table() -> list[str]:
    """What a job that names only its method and model gets, per method and model kind."""
    models = [("any other (e.g. `sd15`)", "sd15"), ("`tiny`", "tiny"), ("`world`", "world")]
    rows = [
        "| method | model | preset | sampler | inversion steps | concept steps | tokens a class "
        "| concept batch x accumulation | learning rate (LoRA) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, spec in METHODS.items():
        if not spec.needs_concepts and not spec.inversion:
            sampler = JobParams.model_validate({"method": name}).sampler
            rows.append(f"| `{name}` | every model | by model | `{sampler}` |{' – |' * 5}")
            continue
        for label, model in models:
            p = JobParams.model_validate({"method": name, "model": model})
            c = p.concepts
            inversion = str(p.inversion_steps) if spec.inversion else "–"
            if spec.needs_concepts:
                lora = (
                    f"{c.lora_learning_rate or c.learning_rate:g}" if spec.concepts == "lora+tokens" else "–"
                )
                learn = [
                    str(c.steps),
                    str(c.tokens_per_class),
                    f"{c.batch_size} x {c.gradient_accumulation}",
                    f"{c.learning_rate:g} ({lora})",
                ]
            else:
                learn = ["–"] * 4
            rows.append(
                f"| `{name}` | {label} | `{p.preset}` | `{p.sampler}` | {inversion} | {' | '.join(learn)} |"
            )
    return rows


def preset_table() -> list[str]:
    keys = sorted({k for v in PRESETS.values() for k in v if k != "concepts"})
    concept_keys = sorted(
        {k for v in PRESETS.values() for k in v["concepts"]}
        | {k for v in MODEL_PRESETS.values() for k in v.get("concepts", {})}
    )
    columns = [(f"`{name}`", values) for name, values in PRESETS.items()]
    for (model, preset), values in MODEL_PRESETS.items():
        merged = {
            **PRESETS[preset],
            "concepts": {**PRESETS[preset]["concepts"], **values.get("concepts", {})},
            "methods": values.get("methods", {}),
        }
        columns.append((f"`{preset}` on `{model}`", merged))
    rows = ["| field | " + " | ".join(c for c, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key in keys:
        rows.append(f"| `{key}` | " + " | ".join(_default(v.get(key)) for _, v in columns) + " |")
    base = ConceptParams()
    for key in concept_keys:
        cells = [_default(v["concepts"].get(key, getattr(base, key))) for _, v in columns]
        rows.append(f"| `concepts.{key}` | " + " | ".join(cells) + " |")
    # A model's preset may set a field for one method only (Diff-II's guidance on the world model).
    own = {
        (method, key)
        for v in MODEL_PRESETS.values()
        for method, m in v.get("methods", {}).items()
        for key in m
    }
    for method, key in sorted(own):
        cells = [_default(v.get("methods", {}).get(method, {}).get(key, JobParams.model_fields[key].default))
                 for _, v in columns]  # fmt: skip
        rows.append(f"| `{key}` ({method}) | " + " | ".join(cells) + " |")
    return rows


def render() -> str:
    flags = cli_flags()
    schema = JobParams.model_json_schema()
    concepts_schema = schema["$defs"]["ConceptParams"]
    quick = ", ".join(f"`{m}`" for m in sorted(QUICK_MODELS))
    lines = [
        f"<!-- Generated by `{COMMAND}` from diffii_core/params.py and the method registry "
        "(diffii_core/methods). Do not edit by hand. -->",
        "",
        "# Job parameters",
        "",
        "One pydantic model, `diffii_core.params.JobParams`, holds everything that decides a job's images; "
        "the library, `diffii augment`, `diffii submit` and the REST API (`POST /v1/jobs`) all take it. "
        "Same parameters and seed give the same image bytes. A value out of range is refused with the "
        "field's name (a `422` over REST, a usage error on the command line).",
        "",
        "Defaults marked *see description* are filled in from the method, the model and the preset when the "
        f"job is validated: `preset` is `quick` for {quick} and `published` for every other model; a "
        "value set explicitly always wins. A job reads back with every default filled in.",
        "",
        "## Fields",
        "",
        "| field | CLI option | type | default | range | description |",
        "|---|---|---|---|---|---|",
        *field_rows(JobParams, schema, "", flags),
        "",
        "## Concept learning (`concepts`)",
        "",
        "| field | CLI option | type | default | range | description |",
        "|---|---|---|---|---|---|",
        *field_rows(ConceptParams, concepts_schema, "concepts.", flags),
        "",
        "The defaults above are `ConceptParams`' own; a job's concept defaults come from its preset, then "
        "the model's own preset, then the method's token count, then what the job sets.",
        "",
        "## Presets",
        "",
        *preset_table(),
        "",
        "## Methods",
        "",
        "Every method reads the common fields (`method`, `preset`, `metaclass`, `expansion`, "
        "`inference_steps`, `sampler`, `guidance_scale`, `seed`, `model`, `resolution`); the last column "
        "lists the others it reads. A method with concepts reads `concepts.*` (`lora_rank` and "
        "`lora_learning_rate` only with a LoRA). A method that starts from no real image takes no "
        "`strength` but 1.",
        "",
        *method_table(),
        "",
        "## Defaults per method and model",
        "",
        "What a job that names only its method and model gets (`JobParams.model_validate({'method': M, "
        "'model': X})`):",
        "",
        *defaults_table(),
        "",
        "## Method `auto`: a recipe chosen per dataset",
        "",
        *auto_section(),
        "",
    ]
    return "\n".join(lines)


def auto_section() -> list[str]:
    """Method "auto": its candidates, the fields it refuses, what it costs."""
    rows = [
        f"| `{c.name}` | " + ", ".join(f"`{k}`: `{json.dumps(v)}`" for k, v in c.overrides.items()) + " |"
        for c in CANDIDATES
    ]
    sets = ", ".join(f"`{f}`" for f in AUTO_SETS)
    unused = ", ".join(f"`{f}`" for f in AUTO_UNUSED)
    return [
        "`method: auto` learns the concepts once, makes a share of one image per real image with each "
        "candidate below (in this order; a tie goes to the earlier one), scores each by "
        "leave-one-real-image-out accuracy of a classifier over the model's pooled VAE features, and makes "
        "the job's share with the best; job.json's `choice` holds every score "
        "([methods.md](methods.md#auto-a-recipe-chosen-per-dataset)). Each candidate is the job's "
        f"parameters with its own overrides; it sets {sets} from them or from its method's and model's "
        f"defaults, so an auto job leaves those out, and {unused}, which the candidates do not take "
        "(Diff-II's pool filling would change what the others' shares are made from).",
        "",
        "| candidate | overrides |",
        "|---|---|",
        *rows,
        "",
        f"What it costs, in the units of the API's `max_job_cost` (`diffii_core.planning`), with N real "
        f"images and K = {len(CANDIDATES)} candidates: concept learning once, plus for each candidate N x "
        "denoising steps (and N x inversion steps for Diff-II), plus (K + 1) x N VAE encodings, plus the "
        "dearest candidate's full share (its images x denoising steps, and its inversions x inversion "
        "steps), all x (resolution / 512)^2.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {PAGE.name}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if {PAGE.name} is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {PAGE}")
    elif args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
