"""Starting processes: refusals that protect the user, secret rotation, schema migrations."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess
from tests.sinks import HttpSink

SAMPLE = json.loads(
    (
        Path(__file__).parents[1] / "samples/01-data-v1-profile-table-create-one-by-one.json"
    ).read_text()
)


def test_no_secret_off_loopback_refuses_to_start(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule("http://127.0.0.1:9/x"))
    router = RouterProcess(tmp_path, rules_dir, secret=None, env={"ROUTER_HOST": "0.0.0.0"})
    router_factory.append(router)
    router.start(wait=False)
    assert router.proc is not None
    assert router.proc.wait(20) == 1
    assert "ROUTER_WEBHOOK_SECRETS" in router.log()


def test_no_secret_on_loopback_warns_loudly(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    router = RouterProcess(tmp_path, rules_dir, secret=None)
    router_factory.append(router)
    router.start()
    assert router.push(SAMPLE).status_code == 202
    assert "INTAKE IS UNAUTHENTICATED" in router.log()


def test_several_secrets_for_rotation(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    router = RouterProcess(
        tmp_path,
        rules_dir,
        secret="old-secret",
        env={
            "ROUTER_WEBHOOK_SECRETS": "old-secret, new-secret",
            "ROUTER_WEBHOOK_SECRET_HEADER": "X-Hook-Key",
        },
    )
    router_factory.append(router)
    router.start()
    cases = (("old-secret", 202), ("new-secret", 202), ("other", 401), ("", 401))
    for n, (value, status) in enumerate(cases):
        response = router.push({**SAMPLE, "id": f"rotation-{n}"}, headers={"X-Hook-Key": value})
        assert response.status_code == status, value
    # The default header name no longer counts once another is configured.
    assert router.push(SAMPLE, headers={"X-Authorization": "old-secret"}).status_code == 401
    assert "new-secret" not in router.log() and "old-secret" not in router.log()


def test_migrate_check_and_apply(tmp_path: Path, rules_dir: Path) -> None:
    router = RouterProcess(tmp_path, rules_dir)
    assert router.cli("migrate", "--check").returncode == 1
    applied = router.cli("migrate")
    assert applied.returncode == 0, applied.stderr
    assert router.cli("migrate", "--check").returncode == 0


def test_serve_without_migrating_refuses_an_old_schema(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule("http://127.0.0.1:9/x"))
    router = RouterProcess(tmp_path, rules_dir)
    router.command = ("serve", "--no-migrate")
    router_factory.append(router)
    router.start(wait=False)
    assert router.proc is not None
    assert router.proc.wait(20) == 1
    log = router.log()
    assert "cannot open the store" in log and "Traceback" not in log


def test_rules_calling_actito_refuse_to_start_without_its_settings(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    # Their jobs could only retry until they expire: say so at start instead.
    (rules_dir / "f.toml").write_text(
        forward_rule("http://127.0.0.1:9/x", name="enriched", extra="") + 'enrich = ["profile"]\n'
    )
    router = RouterProcess(tmp_path, rules_dir, env={"ROUTER_ACTITO_ENTITY": "acme"})
    router_factory.append(router)
    router.start(wait=False)
    assert router.proc is not None
    assert router.proc.wait(20) == 1
    assert (
        "rule(s) enriched call ACTITO's API, but ROUTER_ACTITO_API_KEY is not set" in router.log()
    )
