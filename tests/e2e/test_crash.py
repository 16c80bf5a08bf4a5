"""kill -9 under load: every record that got a 202 is delivered after a restart."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import Load, RouterProcess, poll
from tests.sinks import HttpSink, Reply

PUSHERS = 4
MAX_PUSHES = 2000  # bounded load


def test_kill_9_under_load_loses_nothing_acknowledged(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    # A slowish destination keeps jobs in flight and queued when the kill lands.
    with HttpSink(default=Reply(200, delay=0.01)) as sink:
        (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
        # A short lease: jobs in flight at the kill are claimable again soon after restart.
        env = {"ROUTER_LEASE_SECONDS": "3"}
        router = RouterProcess(tmp_path, rules_dir, env=env)
        router_factory.append(router)
        router.start()

        with Load([router], prefix="crash", limit=MAX_PUSHES, threads=PUSHERS) as load:
            poll(lambda: len(load.acknowledged) >= 300, timeout=60)
            router.kill()
        acknowledged = load.acknowledged
        assert router.proc is not None and router.proc.returncode == -9

        restarted = RouterProcess(tmp_path, rules_dir, port=router.port, env=env)
        router_factory.append(restarted)
        restarted.start()

        def delivered() -> set[int]:
            return {json.loads(r.body)["seq"] for r in sink.requests}

        missing = poll(lambda: not (acknowledged - delivered()) or None, timeout=120) and (
            acknowledged - delivered()
        )
        assert not missing
        duplicates = len(sink.requests) - len(delivered())
        # At-least-once: repeats are possible only for what was in flight at the kill.
        assert duplicates <= 64 + 200


def test_sigterm_finishes_deliveries_in_flight(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    with HttpSink(default=Reply(200, delay=1.0)) as sink:
        (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
        router = RouterProcess(tmp_path, rules_dir)
        router_factory.append(router)
        router.start()
        for n in range(3):
            assert router.push({"id": f"term-{n}", "data": {"seq": n}}).status_code == 202
        sink.wait_for(1)  # deliveries are in flight (the sink answers after 1 s)
        assert router.stop() == 0  # SIGTERM: a clean exit ...
        listed = router.cli("deliveries", "list", "--status", "done", "--format", "json")
        # ... after the deliveries in flight were answered and recorded as done.
        assert len(json.loads(listed.stdout)) == len(sink.requests) == 3
