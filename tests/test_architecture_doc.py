"""docs/ARCHITECTURE.md cannot drift from the code: what it quotes is read back and checked.

- the paths it names (`diffii_core/...`, `services/...`, a code block's `# path.py` header) exist;
- each `def` in a ```python block is the code's signature under that header (parameter names, kinds,
  defaults, annotations and return type wherever the doc writes them), each `class` exists there with
  the fields and methods the doc lists, each module-level `NAME: ...` exists there;
- each prose code span written as a call, `name(a, b, *rest, key=default)`, names a function whose
  leading parameters are those, with those defaults;
- the settings table's literal defaults are the settings classes' defaults;
- every folder `services/common/keys.py` builds is in the object-key block.

The code is read with `ast` (no import of the engine); the settings are imported (pydantic only).
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.api import settings as api_settings
from services.common import keys
from services.common import settings as common_settings
from services.worker import settings as worker_settings

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"
ROOTS = ("diffii_core/", "services/", "tests/", "bench/", "scripts/", "migrations/", "docs/", "infra/")
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def prose(text: str) -> str:
    """The doc without its code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


# --- the code, read with ast -------------------------------------------------------------------------


def module_file(path: str) -> Path:
    """A doc path as a source file: a package folder means its __init__.py."""
    target = ROOT / path
    return target / "__init__.py" if target.is_dir() else target


@cache
def tree(file: Path) -> ast.Module:
    return ast.parse(file.read_text(encoding="utf-8"))


def module_of(name: str) -> Path | None:
    """The source file of a dotted module name inside the repository, if it is one."""
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def defines(node: ast.AST, name: str) -> bool:
    """Whether the statement defines `name`: a def, a class, or an (annotated) assignment."""
    if isinstance(node, (*FUNCTIONS, ast.ClassDef)):
        return node.name == name
    targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def definition(file: Path, name: str) -> ast.AST | None:
    """The top-level def, class or assignment of `name` in `file`, following `from x import name`."""
    for node in tree(file).body:
        if defines(node, name):
            return node
    for node in ast.walk(tree(file)):
        if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
            source = module_of(node.module)
            if source is not None and source != file:
                return definition(source, name)
    return None


def member(cls: ast.ClassDef, name: str) -> ast.AST | None:
    return next((node for node in cls.body if defines(node, name)), None)


@cache
def all_definitions() -> dict[str, list[ast.AST]]:
    """Every top-level function and class, and every method as `Class.method`, of the packages."""
    found: dict[str, list[ast.AST]] = {}
    for package in ("diffii_core", "services"):
        for file in sorted((ROOT / package).rglob("*.py")):
            for node in tree(file).body:
                if isinstance(node, FUNCTIONS):
                    found.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, []).append(node)
                    for item in node.body:
                        if isinstance(item, FUNCTIONS):
                            found.setdefault(f"{node.name}.{item.name}", []).append(item)
    return found


# --- signatures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    default: str | None
    annotation: str | None


def annotation_text(node: ast.expr | None) -> str | None:
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # "Concepts" is Concepts
        node = ast.parse(node.value, mode="eval").body
    return ast.unparse(node)


def params_of(fn: FunctionNode) -> list[Param]:
    a = fn.args
    positional = [*a.posonlyargs, *a.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = [
        Param(p.arg, "positional", ast.unparse(d) if d else None, annotation_text(p.annotation))
        for p, d in zip(positional, defaults, strict=True)
    ]
    if a.vararg:
        out.append(Param(a.vararg.arg, "*", None, annotation_text(a.vararg.annotation)))
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        out.append(Param(p.arg, "keyword", ast.unparse(d) if d else None, annotation_text(p.annotation)))
    if a.kwarg:
        out.append(Param(a.kwarg.arg, "**", None, annotation_text(a.kwarg.annotation)))
    return out


def signature_differences(doc: FunctionNode, code: FunctionNode) -> list[str]:
    """What the doc's def says that the code's does not: every parameter, in order and kind, and each
    default, annotation and the return type wherever the doc writes one."""
    quoted, actual = params_of(doc), params_of(code)
    if [(p.name, p.kind) for p in quoted] != [(p.name, p.kind) for p in actual]:
        return [f"parameters {[(p.name, p.kind) for p in quoted]} != {[(p.name, p.kind) for p in actual]}"]
    problems = []
    for q, c in zip(quoted, actual, strict=True):
        if q.default != c.default:
            problems.append(f"{q.name}: default {q.default} != {c.default}")
        if q.annotation is not None and q.annotation != c.annotation:
            problems.append(f"{q.name}: {q.annotation} != {c.annotation}")
    returns = annotation_text(doc.returns)
    if returns is not None and returns != annotation_text(code.returns):
        problems.append(f"returns {returns} != {annotation_text(code.returns)}")
    return problems


def without_comment(line: str) -> str:
    """The line up to a `#` that is not inside a string."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def defs_in(lines: list[str], start: int) -> tuple[str, int]:
    """The def starting at lines[start], joined up to its closing parenthesis and return type."""
    text, depth, i = "", 0, start
    while True:
        line = without_comment(lines[i]).strip()
        text += " " + line
        depth += line.count("(") + line.count("[") - line.count(")") - line.count("]")
        i += 1
        if depth <= 0 or i == len(lines):
            break
    text = text.strip().rstrip(":").rstrip()
    text = re.sub(r":\s*\.\.\.$", "", text)
    return text + ": ...", i


# --- what the code blocks quote ----------------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    where: str  # module path as the doc wrote it
    owner: str | None  # class name, for a method or a field
    kind: str  # "def", "class", "field", "name"
    name: str
    source: str = ""  # the def's text, for "def"


HEADER = re.compile(r"^# ((?:diffii_core|services)/[\w/]*(?:\.py)?)")
CLASS = re.compile(r"^class (\w+)")
DEF = re.compile(r"^(\s*)(?:async )?def (\w+)")
NAME = re.compile(r"^([A-Z_][A-Z0-9_]*)\s*:")
FIELDS = re.compile(r"^\s+\w+(?:\s*:|\s*;|\s*$)")


def quotes() -> Iterator[Quote]:
    for block in python_blocks(doc_text()):
        lines = block.splitlines()
        where, owner, i = None, None, 0
        while i < len(lines):
            line = lines[i]
            if line[:1].strip() and not line.startswith("#"):
                owner = None  # a line at the margin ends the class above
            if header := HEADER.match(line):
                where, owner = header.group(1), None
            elif where is None or not line.strip() or line.lstrip().startswith(("#", "@")):
                pass
            elif (found := CLASS.match(line)) is not None:
                owner = found.group(1)
                yield Quote(where, None, "class", owner)
            elif (found := DEF.match(line)) is not None:
                source, next_line = defs_in(lines, i)
                yield Quote(where, owner, "def", found.group(2), source)
                i = next_line
                continue
            elif owner is None and (found := NAME.match(line)) is not None:
                yield Quote(where, None, "name", found.group(1))
            elif owner is not None and FIELDS.match(without_comment(line)):
                for part in without_comment(line).split(";"):
                    if name := re.match(r"\s*(\w+)", part):
                        yield Quote(where, owner, "field", name.group(1))
            i += 1


QUOTES = list(quotes())


def test_the_doc_quotes_signatures_to_check() -> None:
    kinds = {q.kind for q in QUOTES}
    assert {"def", "class", "field", "name"} <= kinds
    assert sum(q.kind == "def" for q in QUOTES) >= 20


@pytest.mark.parametrize("quote", QUOTES, ids=lambda q: f"{q.where}:{q.owner or ''}.{q.name}")
def test_each_quoted_definition_is_the_code(quote: Quote) -> None:
    file = module_file(quote.where)
    assert file.exists(), f"{quote.where} does not exist"
    scope: ast.AST | None
    if quote.owner is None:
        scope = definition(file, quote.name)
        assert scope is not None, f"{quote.name} is not defined in {quote.where}"
        if quote.kind == "def":
            assert isinstance(scope, FUNCTIONS), f"{quote.name} is no function"
    else:
        cls = definition(file, quote.owner)
        assert isinstance(cls, ast.ClassDef), f"class {quote.owner} is not in {quote.where}"
        scope = member(cls, quote.name)
        assert scope is not None, f"{quote.owner} has no {quote.name}"
    if quote.kind == "def":
        doc_fn = ast.parse(quote.source).body[0]
        assert isinstance(doc_fn, FUNCTIONS)
        assert isinstance(scope, FUNCTIONS)
        assert signature_differences(doc_fn, scope) == [], quote.source


# --- what the prose quotes ---------------------------------------------------------------------------

# `name(args)` or `Class.method(args)`, optionally followed by ` -> ...`; `...` stands for "some".
CALL = re.compile(r"`((?:[A-Z]\w*\.)?[a-z_]\w*)\(([^()`]*)\)(?: -> [^`]*)?`")


def prose_calls() -> list[tuple[str, str]]:
    return [(name, args) for name, args in CALL.findall(prose(doc_text())) if args.strip() != "..."]


def call_matches(fn: FunctionNode, args: str, method: bool) -> list[str]:
    """Differences between the quoted call's arguments and the function's leading parameters."""
    params = params_of(fn)[1 if method else 0 :]
    quoted = [a.strip() for a in args.split(",") if a.strip()]
    problems = []
    for i, arg in enumerate(quoted):
        name, _, default = arg.partition("=")
        star = name[: len(name) - len(name.lstrip("*"))]  # "", "*" or "**"
        name = name.lstrip("*").strip()
        match = next((p for p in params if p.name == name), None)
        if match is None:
            problems.append(f"no parameter {name!r}")
        elif star and match.kind != star:
            problems.append(f"{name} is not {star}{name}")
        elif default and match.default != default.strip():
            problems.append(f"{name}: default {default.strip()} != {match.default}")
        elif not default and not star and match.kind == "positional" and params.index(match) != i:
            problems.append(f"{name} is not parameter {i + 1}")
    required = [p.name for p in params if p.kind in ("positional", "keyword") and p.default is None]
    named = {a.partition("=")[0].lstrip("*").strip() for a in quoted}
    if quoted and (missing := [n for n in required if n not in named]):
        problems.append(f"required {missing} not quoted")
    return problems


def test_the_prose_quotes_calls_to_check() -> None:
    assert len(prose_calls()) >= 10


@pytest.mark.parametrize(("name", "args"), prose_calls(), ids=lambda v: v)
def test_each_quoted_call_names_the_function_s_parameters(name: str, args: str) -> None:
    candidates = [node for node in all_definitions().get(name, []) if isinstance(node, FUNCTIONS)]
    assert candidates, f"no function {name} in diffii_core/ or services/"
    problems = [call_matches(fn, args, method="." in name) for fn in candidates]
    assert any(not p for p in problems), f"`{name}({args})`: {problems}"


# --- paths ----------------------------------------------------------------------------------------


def quoted_paths() -> list[str]:
    spans = re.findall(r"`([^`\s]+)`", prose(doc_text()))
    found = {s.rstrip(":,") for s in spans if s.startswith(ROOTS) and not re.search(r"[{}*<>$]", s)}
    return sorted(found)


@pytest.mark.parametrize("path", quoted_paths())
def test_each_quoted_path_exists(path: str) -> None:
    if not (ROOT / path).exists():  # `services/worker/sweeper.release_dead_worker`: a module's name
        module, _, name = path.rpartition(".")
        file = ROOT / f"{module}.py"
        assert file.exists(), path
        assert definition(file, name) is not None, path


# --- settings and object keys ------------------------------------------------------------------------


def settings_fields() -> dict[str, object]:
    """Every settings field's default, by environment variable name."""
    found: dict[str, object] = {}
    for module in (common_settings, api_settings, worker_settings):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseSettings) and cls is not BaseSettings:
                prefix = cls.model_config.get("env_prefix", "")
                for name, field in cls.model_fields.items():
                    found[f"{prefix}{name}".upper()] = field.get_default(call_default_factory=True)
    return found


def table_defaults() -> list[tuple[str, str]]:
    """(variable, default) for each settings-table row; "A, B | 1, 2" rows give one pair per name."""
    rows = re.findall(r"^\| (DIFFII_[^|]+?) \| ([^|]*?) \|", doc_text(), flags=re.M)
    pairs = []
    for names, default in rows:
        variables = [n.strip() for n in names.split(",")]
        values = [v.strip() for v in default.split(",")] if len(variables) > 1 else [default.strip()]
        if len(values) == len(variables):
            pairs.extend(zip(variables, values, strict=True))
    return pairs


def literal(text: str) -> object:
    """The doc's default as a value; a parenthesised gloss ("(50 GiB)") is not part of it."""
    text = re.sub(r"\s*\(.*\)$", "", text).strip()
    try:
        return json.loads(text)
    except ValueError:
        return text


@pytest.mark.parametrize(("variable", "default"), table_defaults())
def test_each_literal_default_in_the_settings_table_is_the_code_s(variable: str, default: str) -> None:
    fields = settings_fields()
    if variable not in fields:
        pytest.skip("read by the client, not a settings class")
    actual, quoted = fields[variable], literal(default)
    if actual in ("", None) or isinstance(actual, Path) or "$" in default:
        pytest.skip("derived at start-up (from DIFFII_HOME or another setting)")
    if isinstance(quoted, (int, float)) and isinstance(actual, (int, float)):
        assert float(quoted) == float(actual), variable
    else:
        assert quoted == actual, variable


class Placeholder:
    """Formats as `{name}` whatever the format spec, so a key function shows its pattern."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return "{" + self.name + "}"

    __str__ = __repr__ = lambda self: "{" + self.name + "}"


def test_every_object_key_folder_is_documented() -> None:
    block = re.search(r"## Object keys.*?```\n(.*?)```", doc_text(), flags=re.S)
    assert block is not None
    documented = [line.split()[0] for line in block.group(1).splitlines() if line.strip()]
    for name, fn in inspect.getmembers(keys, inspect.isfunction):
        parameters = inspect.signature(fn).parameters.values()
        if fn.__module__ != keys.__name__ or any(p.annotation not in ("str", "int") for p in parameters):
            continue  # a helper, not a key
        key = fn(*(Placeholder(p) for p in inspect.signature(fn).parameters))
        folder = key[: key.rindex("/") + 1]
        assert any(line.startswith(folder) for line in documented), f"keys.{name}: {folder} is not listed"
