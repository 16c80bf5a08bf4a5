"""A PostgreSQL outage, staged on a private cluster: the intake answers 503 quickly and says
why, /readyz names the store, and once the server is back the same router process serves and
delivers again, having lost nothing it acknowledged before the outage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.e2e.pg import Cluster, Unavailable
from tests.sinks import HttpSink, Reply, free_port

pytestmark = pytest.mark.postgres

UNAVAILABLE_WITHIN = 15.0  # seconds: a push during the outage is answered 503 within this
DEADLINE = 20.0  # seconds for any one phase


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    try:
        with Cluster() as running:
            yield running
    except Unavailable as exc:
        pytest.skip(str(exc))


def event(seq: int) -> dict[str, object]:
    return {
        "id": f"outage-{seq}",
        "tableType": "PROFILE_TABLE",
        "operation": "CREATE",
        "data": {"seq": seq},
    }


async def listeners(url: str) -> int:
    """Connections of this cluster that last ran LISTEN (the routers' wake-up channels)."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"
        )
        return int(count)
    finally:
        await conn.close()


@pytest.mark.parametrize("split", [False, True], ids=["serve", "intake+worker"])
def test_store_outage_answers_503_then_heals_without_restart(
    tmp_path: Path,
    rules_dir: Path,
    sink: HttpSink,
    router_factory: list[RouterProcess],
    cluster: Cluster,
    split: bool,
) -> None:
    (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
    env = {
        "ROUTER_RELOAD": "false",
        # Jobs failing across the outage keep being retried, never dead.
        "ROUTER_RETRY_MAX_ATTEMPTS": "100",
        "ROUTER_LEASE_SECONDS": "5",
    }

    def process(*command: str) -> RouterProcess:
        port = free_port()
        own = {**env, "ROUTER_WORKER_PORT": str(port)}
        proc = RouterProcess(
            tmp_path, rules_dir, store_url=cluster.url, command=command, env=own, port=port
        )
        router_factory.append(proc)
        return proc.start()

    router = process("serve", "--no-worker") if split else process("serve")
    deliverer = process("worker") if split else router
    poll(lambda: "worker started" in deliverer.log() or not split, timeout=DEADLINE)

    def delivered() -> set[int]:
        return {json.loads(r.body)["seq"] for r in sink.requests}

    def claim_failures() -> int:
        return deliverer.log().count("cannot claim jobs")

    # Before: accepted and delivered.
    assert router.push(event(0)).status_code == 202
    poll(lambda: 0 in delivered(), timeout=DEADLINE)

    # Acknowledged but not yet delivered when the store goes away: the destination refuses.
    sink.default = Reply(503)
    for seq in range(1, 6):
        assert router.push(event(seq)).status_code == 202
    poll(lambda: len(sink.requests) >= 6, timeout=DEADLINE)  # they are being retried

    cluster.stop("fast")
    started = time.monotonic()
    down = router.push(event(99))
    took = time.monotonic() - started
    assert down.status_code == 503, down.text
    assert took < UNAVAILABLE_WITHIN, f"the 503 took {took:.1f} s"
    assert "store" in down.json()["error"]
    assert down.headers["Retry-After"]

    ready = router.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert any("store" in problem for problem in ready.json()["problems"])
    assert router.get("/healthz").status_code == 200  # alive: no reason to restart it
    # The outage lasts while the worker keeps trying (and failing) to claim.
    poll(lambda: claim_failures() >= 2, timeout=DEADLINE)

    cluster.start()
    sink.default = Reply(200)

    def ready_again() -> bool:
        try:
            return router.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    poll(ready_again, timeout=DEADLINE, every=0.2)
    after = router.push(event(100))
    assert after.status_code == 202, after.text
    assert after.json() == {"accepted": 1, "duplicates": 0}

    acknowledged = {0, 1, 2, 3, 4, 5, 100}
    poll(lambda: acknowledged <= delivered(), timeout=DEADLINE, every=0.2)
    # The worker listens for wake-ups again (it would otherwise only poll).
    poll(lambda: asyncio.run(listeners(cluster.url)) >= 1, timeout=DEADLINE, every=0.2)
    for proc in {id(p): p for p in (router, deliverer)}.values():
        assert proc.proc is not None and proc.proc.poll() is None, f"exited:\n{proc.log()}"
    # The push answered 503 was not acknowledged, nor stored, nor delivered.
    assert 99 not in delivered()
