"""The image, built and run with podman (slow): it builds on a local stand-in base, serves,
authenticates and delivers an event to a sink on the host as a non-root, read-only container;
with ROUTER_TEST_POSTGRES_URL also as migrate + intake + worker on PostgreSQL, the compose and
Kubernetes topology. The recipes themselves are checked statically in tests/test_deploy.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.deploy_support import DEPLOY, ROOT, run
from tests.sinks import HttpSink, free_port

SAMPLE = ROOT / "tests" / "samples" / "01-data-v1-profile-table-create-one-by-one.json"
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
        result = run("podman", *argv, timeout=timeout, env=self.env, **kwargs)
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
        one_off = ["run", "--rm", "--network", "host", f"--env=ROUTER_STORE_URL={database}"]
        migrated = podman(*one_off, image, "router", "migrate", check=False)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        # Host network: the worker's health port must be free too (the default 8081 may not be).
        worker_port = free_port()
        working = {**env, "ROUTER_WORKER_PORT": str(worker_port)}
        with (
            _running(podman, image, *intake, env=serving, rules=rules) as router,
            _running(podman, image, "router", "worker", "--no-migrate", env=working) as worker,
        ):
            router.wait_ready(port)
            worker.wait_ready(worker_port)
            assert _http("GET", f"http://127.0.0.1:{worker_port}/healthz") == 200
            _push_and_expect_delivery(port, sink, router, worker)
            metrics = f"http://127.0.0.1:{worker_port}/metrics"
            done = 'router_deliveries_total{action="http",mode="live",outcome="done"} 1.0'
            _poll(
                "the worker's /metrics counts the delivery",
                lambda: done in _text(metrics),
                30,
                worker.logs,
            )
