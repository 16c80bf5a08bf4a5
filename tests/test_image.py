"""The image, built by deploy/build.sh and run with podman (slow): on a local stand-in base it
builds with its labels and SBOM, holds the product only, serves, authenticates and delivers as
a non-root, read-only container, and drains a slow delivery when stopped the documented way;
with ROUTER_TEST_POSTGRES_URL, the compose services (migrate, intake, worker) run in their
order with compose.yaml's own settings. The recipes are checked statically in
tests/test_deploy.py."""

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
import tomllib
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml

from tests.deploy_support import DEPLOY, ROOT, run
from tests.sinks import HttpSink, Reply, free_port

SAMPLE = ROOT / "tests" / "samples" / "01-data-v1-profile-table-create-one-by-one.json"
BASE_STANDIN = "localhost/router-base-standin"
SECRET = "deploy-test-secret"
SOURCE = "https://git.example.com/ops/actito-router"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SBOM = "/usr/share/doc/actito-router/sbom.cdx.json"
SLOW_REPLY = 12.0  # seconds: longer than the 10 s a container engine waits by default


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
        result = run("podman", *argv, timeout=timeout, env=self.env, **kwargs)
        if check:
            assert result.returncode == 0, f"podman {' '.join(argv)}:\n{result.stderr}"
        return result


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (CI installs it with .ci/container-tools.sh)")
    return Podman(tmp_path_factory.mktemp("podman") / "containers.conf")


def _stand_in_base(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A local Debian base with Python (registry pulls are not assumed to work): it proves the
    recipe builds and runs, not the upstream python:3.12-slim itself."""
    if podman("image", "exists", BASE_STANDIN, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        pytest.skip(f"debootstrap is needed to make {BASE_STANDIN}")
    rootfs = tmp_path_factory.mktemp("rootfs")
    made = run(
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


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The image as deploy/build.sh builds it, under a tag of this run's own."""
    _stand_in_base(podman, tmp_path_factory)
    tag = f"localhost/actito-router:test-{uuid.uuid4().hex[:8]}"
    env = {**podman.env, "IMAGE": tag, "CONTAINER_ENGINE": "podman", "IMAGE_SOURCE": SOURCE}
    built = run(
        "bash",
        str(DEPLOY / "build.sh"),
        "--pull=never",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={BASE_STANDIN}",
        env=env,
        timeout=900,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    yield tag
    podman("rmi", "--force", tag, check=False)


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


def _text(url: str) -> str:
    """The body of a GET, or "" if there is no answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return ""


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

    def healthy(self) -> bool:
        """The container's own health check, run now (as compose's service_healthy waits)."""
        if self.state("Running") != "true":
            pytest.fail(f"{self.name} stopped\n{self.logs()}")
        return self.podman("healthcheck", "run", self.name, check=False).returncode == 0

    def wait_healthy(self) -> None:
        _poll(f"{self.name} is healthy", self.healthy, 60, self.logs)

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
    podman: Podman, image: str, options: list[str], command: list[str] | None = None
) -> Iterator[Container]:
    """`podman run --detach` with `options`, running `command` (default: the image's CMD)."""
    name = f"router-deploy-test-{uuid.uuid4().hex[:8]}"
    podman("run", "--detach", f"--name={name}", *options, image, *(command or []))
    try:
        yield Container(podman, name)
    finally:
        podman("rm", "--force", "--volumes", name, check=False)


def _options(env: dict[str, str], rules: Path | None = None) -> list[str]:
    options = [f"--env={key}={value}" for key, value in env.items()]
    if rules is not None:
        options.append(f"--volume={rules}:/etc/router/rules:ro")
    return options


def _forwarding_rules(directory: Path, sink: HttpSink, *, timeout: int = 5) -> Path:
    """A rules folder with one rule that forwards every profile record to the sink."""
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)  # the container user (uid 10001) must read it, whatever the umask
    rule = directory / "forward.toml"
    rule.write_text(
        '[[rule]]\nname = "forward"\n[rule.match]\ntableType = "PROFILE_TABLE"\n'
        f'[[rule.action]]\ntype = "http"\nurl = "{sink.url("/sink")}"\ntimeout = {timeout}\n'
    )
    rule.chmod(0o644)
    return directory


def _push(port: int, *, secret: str | None = SECRET) -> int:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Authorization"] = secret
    return _http("POST", f"http://127.0.0.1:{port}/webhooks/actito", SAMPLE.read_bytes(), **headers)


def _push_and_expect_delivery(port: int, sink: HttpSink, *containers: Container) -> None:
    assert _push(port, secret=None) == 401
    assert _push(port) == 202
    try:
        (forwarded,) = sink.wait_for(1, timeout=30)
    except AssertionError:
        pytest.fail(
            "nothing reached the sink within 30 s\n" + "\n".join(c.logs() for c in containers)
        )
    assert json.loads(forwarded.body) == json.loads(SAMPLE.read_bytes())["data"]
    assert forwarded.headers["Idempotency-Key"]


def _output(podman: Podman, image: str, *command: str, options: tuple[str, ...] = ()) -> str:
    shown = podman("run", "--rm", "--network", "host", *options, image, *command)
    return str(shown.stdout)


# ---------------------------------------------------------------- what the image is


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_labels(podman: Podman, image: str) -> None:
    shown = podman("image", "inspect", "--format", "{{json .Labels}}", image)
    labels = json.loads(shown.stdout)
    revision = run("git", "rev-parse", "HEAD", cwd=ROOT).stdout.strip()
    prefix = "org.opencontainers.image."
    assert labels[f"{prefix}version"] == VERSION
    assert re.fullmatch(f"{revision}(-dirty)?", labels[f"{prefix}revision"]), labels
    assert labels[f"{prefix}source"] == SOURCE
    assert labels[f"{prefix}licenses"] == "Apache-2.0"
    assert labels[f"{prefix}base.name"] == BASE_STANDIN


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_keeps_an_sbom_of_exactly_its_locked_packages(podman: Podman, image: str) -> None:
    sbom = json.loads(_output(podman, image, "cat", SBOM))
    assert sbom["bomFormat"] == "CycloneDX"
    root = sbom["metadata"]["component"]
    assert (root["name"], root["version"]) == ("actito-router", VERSION)
    listed = {_normalised(c["name"]): c["version"] for c in sbom["components"]}
    lock = (ROOT / "requirements" / "runtime.txt").read_text()
    locked = {_normalised(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock, re.M)}
    assert listed == locked


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_holds_the_product_only(podman: Podman, image: str) -> None:
    script = (
        "import importlib.util, json, os; "
        "print(json.dumps({'rules': sorted(os.listdir('/etc/router/rules')), "
        "'tests': importlib.util.find_spec('tests') is not None, "
        "'sources': os.path.exists('/src'), "
        "'pip': importlib.util.find_spec('pip') is not None, "
        "'json': sorted(os.path.join(d, f) for d, _, fs in os.walk('/etc/router') "
        "for f in fs if f.endswith('.json'))}))"
    )
    found = json.loads(_output(podman, image, "python3", "-c", script))
    assert found == {
        "rules": ["90-audit-log.toml"],
        "tests": False,
        "sources": False,
        "pip": False,
        "json": [],
    }


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_validates_its_bundled_rules(podman: Podman, image: str) -> None:
    result = podman("run", "--rm", "--network", "host", image, "router", "check", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/etc/router/rules/: 1 rule in 1 file, 0 errors" in result.stdout


# ---------------------------------------------------------------- running it


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_image_serves_and_delivers(podman: Podman, image: str, tmp_path: Path) -> None:
    """The image as shipped (CMD `router serve`, SQLite in its volume), locked down, with its
    operations on their own port as the manifests run it."""
    port, ops = free_port(), free_port()
    env = {"ROUTER_PORT": str(port), "ROUTER_OPS_PORT": str(ops), "ROUTER_WEBHOOK_SECRETS": SECRET}
    with HttpSink() as sink:
        rules = _forwarding_rules(tmp_path / "rules", sink)
        with _running(podman, image, [*LOCKED_DOWN, *_options(env, rules)]) as router:
            router.wait_ready(ops)
            _push_and_expect_delivery(port, sink, router)
            assert podman("exec", router.name, "id", "-u").stdout.strip() == "10001"
            router.wait_healthy()  # the HEALTHCHECK finds /healthz on ROUTER_OPS_PORT
            assert _http("GET", f"http://127.0.0.1:{port}/healthz") == 404  # not on the intake
            # SIGTERM reaches the router (exec-form CMD): it drains and exits cleanly.
            podman("stop", "--time", "40", router.name, timeout=60)
            assert router.state("ExitCode") == "0", router.logs()


def _documented_stop_timeout() -> str:
    text = (ROOT / "docs" / "deploy.md").read_text()
    (timeout,) = set(re.findall(r"docker run [^`]*?--stop-timeout (\d+)", text))
    return timeout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_stopping_as_documented_lets_a_slow_delivery_finish_and_records_it_once(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    """`docker stop` of a container run with the documented --stop-timeout, while a delivery
    that takes longer than an engine's default 10 s is in flight: the router waits for it,
    records it done once, and exits 0; nothing is left to send again."""
    port = free_port()
    env = {"ROUTER_PORT": str(port), "ROUTER_WEBHOOK_SECRETS": SECRET}
    timeout = ["--stop-timeout", _documented_stop_timeout()]
    with HttpSink(Reply(200, delay=SLOW_REPLY)) as sink:
        rules = _forwarding_rules(tmp_path / "rules", sink, timeout=30)
        with _running(podman, image, [*LOCKED_DOWN, *timeout, *_options(env, rules)]) as router:
            router.wait_ready(port)
            assert _push(port) == 202
            sink.wait_for(1, timeout=30)  # in flight: its answer comes SLOW_REPLY s later
            started = time.monotonic()
            podman("stop", router.name, timeout=120)  # the container's own stop timeout
            took = time.monotonic() - started
            assert router.state("ExitCode") == "0", router.logs()
            assert took >= SLOW_REPLY - 2, "the container stopped before the delivery ended"
            listed = _output(
                podman,
                image,
                "router",
                "deliveries",
                "list",
                "--format",
                "json",
                options=(f"--volumes-from={router.name}",),
            )
            (job,) = json.loads(listed)
            assert (job["status"], job["attempts"]) == ("done", 1), job
            assert len(sink.requests) == 1


# ---------------------------------------------------------------- compose, run in order


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


def _compose_services(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """compose.yaml as `podman-compose config` resolves it with a filled-in router.env; and
    that env file."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", deploy)
    example = (DEPLOY / "router.env.example").read_text()
    filled = example.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=0123abcd\n")
    env_file = deploy / "router.env"
    env_file.write_text(
        filled.replace("ROUTER_WEBHOOK_SECRETS=\n", f"ROUTER_WEBHOOK_SECRETS={SECRET}\n")
    )
    local = Path(sys.executable).parent / "podman-compose"
    podman_compose = str(local) if local.exists() else shutil.which("podman-compose")
    assert podman_compose, "podman-compose is missing: install the test extras"
    parsed = run(
        podman_compose, "--env-file", str(env_file), "-f", "compose.yaml", "config", cwd=deploy
    )
    assert parsed.returncode == 0, parsed.stderr
    services: dict[str, Any] = yaml.safe_load(parsed.stdout)["services"]
    return services, env_file


def _seconds(value: str) -> int:
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, value
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def _as_podman_run(service: dict[str, Any], env_file: Path, env: dict[str, str]) -> list[str]:
    """The `podman run` options that give a container what compose would: its lock-down,
    limits, stop grace period, health check, env file and environment (`env` overriding what
    this machine needs changed: addresses, ports). Volumes are the caller's."""
    options = ["--network", "host", f"--env-file={env_file}"]
    if service.get("read_only"):
        options.append("--read-only")
    options += [f"--tmpfs={mount}" for mount in service.get("tmpfs", [])]
    options += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    options += [f"--security-opt={o.removesuffix(':true')}" for o in service["security_opt"]]
    limits = service["deploy"]["resources"]["limits"]
    options += [f"--cpus={limits['cpus']}", f"--memory={limits['memory']}"]
    options.append(f"--pids-limit={limits['pids']}")
    options.append(f"--stop-timeout={_seconds(service['stop_grace_period'])}")
    health = service.get("healthcheck")
    if health and "test" in health:
        assert health["test"][0] == "CMD"
        options.append(f"--health-cmd={json.dumps(health['test'][1:])}")
    merged = {**service.get("environment", {}), **env}
    options += [f"--env={key}={value}" for key, value in merged.items()]
    return options


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(1200)
def test_the_compose_services_run_in_order(
    podman: Podman, image: str, database: str, tmp_path: Path
) -> None:
    """What `docker compose up` does with the router's services, done by hand (podman-compose
    cannot here): each container run with compose.yaml's own settings, on the host's
    PostgreSQL instead of the postgres service. `migrate` first; the intake and the worker,
    both with --no-migrate, once it has completed; each healthy by its own health check; a push
    delivered; each stopped within its grace period."""
    services, env_file = _compose_services(tmp_path)
    intake_port, ops_port, worker_port = free_port(), free_port(), free_port()
    store = {"ROUTER_STORE_URL": database}
    with HttpSink() as sink:
        rules = _forwarding_rules(tmp_path / "rules", sink)
        # compose mounts ../rules into the intake; here, rules that forward to the sink.
        (mount,) = services["router"]["volumes"]
        assert mount.endswith(":/etc/router/rules:ro")
        intake_env = {**store, "ROUTER_PORT": str(intake_port), "ROUTER_OPS_PORT": str(ops_port)}
        intake = [
            *_as_podman_run(services["router"], env_file, intake_env),
            f"--volume={rules}:/etc/router/rules:ro",
        ]
        worker_env = {**store, "ROUTER_WORKER_PORT": str(worker_port)}
        worker = _as_podman_run(services["worker"], env_file, worker_env)
        # Before `migrate` has run, an intake refuses to start (why compose orders them).
        with _running(podman, image, intake, services["router"]["command"]) as early:
            _poll(
                "the unmigrated intake exited",
                lambda: early.state("Running") != "true",
                60,
                early.logs,
            )
            assert early.state("ExitCode") != "0"
            assert "router migrate" in early.logs()
        migrate = _as_podman_run(services["migrate"], env_file, store)
        migrated = podman("run", "--rm", *migrate, image, *services["migrate"]["command"])
        assert "migrations applied" in migrated.stdout
        with (
            _running(podman, image, intake, services["router"]["command"]) as router,
            _running(podman, image, worker, services["worker"]["command"]) as delivering,
        ):
            router.wait_healthy()
            delivering.wait_healthy()
            _push_and_expect_delivery(intake_port, sink, router, delivering)
            metrics = f"http://127.0.0.1:{worker_port}/metrics"
            done = 'router_deliveries_total{action="http",mode="live",outcome="done"} 1.0'
            _poll(
                "the worker's /metrics counts the delivery",
                lambda: done in _text(metrics),
                30,
                delivering.logs,
            )
            assert "router_records_received_total 1.0" in _text(
                f"http://127.0.0.1:{ops_port}/metrics"
            )
            assert _http("GET", f"http://127.0.0.1:{intake_port}/metrics") == 404
            for container in (router, delivering):
                podman("stop", container.name, timeout=120)
                assert container.state("ExitCode") == "0", container.logs()
