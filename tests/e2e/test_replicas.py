"""Several replicas on one PostgreSQL database: two intakes and a separate `router worker`.

A replica killed with SIGKILL mid-load loses nothing that was acknowledged: the others keep
accepting and delivering, and jobs the dead one had claimed are delivered once its leases
expire. Repeats stay within what the dead worker held. Dedupe holds across intakes, and
`router deliveries list` reads the shared store.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import Load, RouterProcess, poll
from tests.e2e.pg import Unavailable, fresh_database
from tests.sinks import HttpRequest, HttpSink, Reply, free_port

pytestmark = pytest.mark.postgres

PUSHERS = 4
MAX_PUSHES = 1500  # bounded load; the test stops pushing well before this
KILL_AFTER = 150  # acknowledged pushes before the kill
PUSH_AFTER_KILL = 100  # acknowledged pushes after it, so the survivors carry load too
CONCURRENCY = 16  # per process: small, so what a killed worker held is small and known
SINK_DELAY = 0.05  # seconds per delivery: keeps jobs claimed and in flight at the kill
DEADLINE = 25.0  # seconds for any one phase
BASE_ENV = {
    "ROUTER_CONCURRENCY": str(CONCURRENCY),
    "ROUTER_RELOAD": "false",
    "PYTHONUNBUFFERED": "1",  # a SIGKILLed process's log is complete up to the kill
}


@pytest.fixture
def pg_url() -> Iterator[str]:
    try:
        with fresh_database() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


@dataclass
class Replicas:
    intake: RouterProcess  # serve --no-worker
    serve: RouterProcess  # serve (intake and worker)
    worker: RouterProcess  # router worker

    def by_role(self, role: str) -> RouterProcess:
        return {"intake": self.intake, "serve": self.serve, "worker": self.worker}[role]


def start_replicas(
    tmp_path: Path, rules_dir: Path, url: str, env: dict[str, str], started: list[RouterProcess]
) -> Replicas:
    def make(*command: str) -> RouterProcess:
        port = free_port()
        # A worker serves its health port on ROUTER_WORKER_PORT: give it its own free one.
        own = {**env, "ROUTER_WORKER_PORT": str(port)}
        proc = RouterProcess(
            tmp_path, rules_dir, store_url=url, command=command, env=own, port=port
        )
        started.append(proc)
        return proc

    # The first one migrates the fresh database; the others start on a current schema.
    intake = make("serve", "--no-worker").start()
    serve = make("serve").start(wait=False)
    worker = make("worker").start()
    serve.wait_healthy()
    poll(lambda: "worker started" in worker.log(), timeout=DEADLINE)
    return Replicas(intake, serve, worker)


def delivered_count(proc: RouterProcess) -> int:
    return sum(1 for line in proc.log_lines() if line.get("message") == "delivered")


def sequence_of(request: HttpRequest) -> int:
    return int(json.loads(request.body)["seq"])


@pytest.mark.parametrize(
    ("victim", "lease", "max_repeats"),
    [
        # The worker held at most CONCURRENCY claimed jobs, plus at most one claim batch
        # (never more than CONCURRENCY) delivered but not yet recorded.
        ("worker", 3, 2 * CONCURRENCY),
        ("serve", 3, 2 * CONCURRENCY),
        # No worker dies: nothing may be delivered twice (the long lease rules out expiry).
        ("intake", 60, 0),
    ],
)
def test_sigkill_one_replica_under_load_loses_nothing_acknowledged(
    tmp_path: Path,
    rules_dir: Path,
    router_factory: list[RouterProcess],
    pg_url: str,
    victim: str,
    lease: int,
    max_repeats: int,
) -> None:
    with HttpSink(default=Reply(200, delay=SINK_DELAY)) as sink:
        (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
        env = {**BASE_ENV, "ROUTER_LEASE_SECONDS": str(lease)}
        replicas = start_replicas(tmp_path, rules_dir, pg_url, env, router_factory)
        doomed = replicas.by_role(victim)

        targets = [replicas.intake, replicas.serve]  # pushes spread over both intakes
        with Load(targets, prefix="replica", limit=MAX_PUSHES, threads=PUSHERS) as load:
            acknowledged = load.acknowledged
            poll(lambda: len(acknowledged) >= KILL_AFTER, timeout=DEADLINE)
            if victim != "intake":  # kill it while it is delivering, not before
                poll(lambda: delivered_count(doomed) >= 10, timeout=DEADLINE)
            doomed.kill()
            at_kill = len(acknowledged)
            poll(lambda: len(acknowledged) >= at_kill + PUSH_AFTER_KILL, timeout=DEADLINE)
        assert doomed.proc is not None and doomed.proc.returncode == -9

        def missing() -> set[int]:
            return acknowledged - {sequence_of(r) for r in sink.requests}

        poll(lambda: not missing(), timeout=DEADLINE, every=0.2)

        keys: defaultdict[int, set[str]] = defaultdict(set)
        for request in sink.requests:
            keys[sequence_of(request)].add(request.headers["Idempotency-Key"])
        # A repeat is the same job delivered again, never a second job for one record.
        assert all(len(job_ids) == 1 for job_ids in keys.values())
        repeats = len(sink.requests) - len(keys)
        assert repeats <= max_repeats, f"{repeats} repeated deliveries"


def test_dedupe_holds_across_intakes_and_deliveries_list_reads_the_shared_store(
    tmp_path: Path,
    rules_dir: Path,
    sink: HttpSink,
    router_factory: list[RouterProcess],
    pg_url: str,
) -> None:
    (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
    replicas = start_replicas(tmp_path, rules_dir, pg_url, BASE_ENV, router_factory)
    intakes = [replicas.intake, replicas.serve]
    events = [
        {"id": f"dup-{n}", "tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"seq": n}}
        for n in range(20)
    ]

    # Each event goes to both intakes at the same moment: the race is decided in the database.
    with ThreadPoolExecutor(max_workers=2 * len(events)) as pool:
        futures = [
            (n, pool.submit(intake.push, event))
            for n, event in enumerate(events)
            for intake in intakes
        ]
        answers: defaultdict[int, list[dict[str, int]]] = defaultdict(list)
        for n, future in futures:
            response = future.result()
            assert response.status_code == 202, response.text
            answers[n].append(response.json())
    for n, pair in answers.items():
        assert sorted(pair, key=lambda a: a["accepted"]) == [
            {"accepted": 0, "duplicates": 1},
            {"accepted": 1, "duplicates": 0},
        ], f"event {n}: {pair}"

    requests = sink.wait_for(len(events), timeout=DEADLINE)
    assert sorted(sequence_of(r) for r in requests) == list(range(len(events)))

    def listed_done() -> list[dict[str, object]] | None:
        done = replicas.intake.cli("deliveries", "list", "--status", "done", "--format", "json")
        assert done.returncode == 0, done.stderr
        jobs: list[dict[str, object]] = json.loads(done.stdout)
        return jobs if len(jobs) == len(events) else None

    jobs = poll(listed_done, timeout=DEADLINE, every=0.3)  # done once the attempt is recorded
    assert {job["id"] for job in jobs} == {r.headers["Idempotency-Key"] for r in requests}
    assert {job["event_id"] for job in jobs} == {event["id"] for event in events}

    text = replicas.worker.cli("deliveries", "list", "--limit", "5")
    assert text.returncode == 0, text.stderr
    header, *rows = text.stdout.splitlines()
    assert header.split()[:3] == ["ID", "STATUS", "RULE"]
    assert len(rows) == 5 and all(row.split()[1] == "done" for row in rows)

    shown = replicas.serve.cli("deliveries", "show", str(jobs[0]["id"]))
    assert shown.returncode == 0, shown.stderr
    assert "status    done" in shown.stdout
