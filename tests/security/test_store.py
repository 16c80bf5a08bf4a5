"""The store cannot vanish silently, and every string the JSON parser accepts is kept.

Against a real `router serve`: a SQLite file deleted or replaced while the router runs stops the
202s at once (503 + Retry-After), fails /readyz and says so loudly, and what the orphaned file
held can still be delivered; a full disk fails /readyz while writes fail; a lone surrogate, a NUL
or a deep structure in one push is stored and forwarded exactly, on SQLite and PostgreSQL, and
never disturbs the 300 good pushes that share its group commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import SECRET, RouterProcess, poll
from tests.e2e.pg import Unavailable, fresh_database, server_url
from tests.sinks import HttpSink, Reply


def event(seq: int | str, data: Any = None) -> dict[str, Any]:
    return {
        "id": f"store-{seq}",
        "tableType": "PROFILE_TABLE",
        "tableId": "16",
        "eventType": "DATA",
        "operation": "CREATE",
        "fields": ["emailAddress"],
        "data": {"seq": seq} if data is None else data,
    }


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


def start(tmp_path: Path, sink: HttpSink, store: Path | str | None = None) -> RouterProcess:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "forward.toml").write_text(forward_rule(sink.url("/in")))
    url = store if isinstance(store, str) else f"sqlite:///{store}" if store else None
    # Destinations fail on purpose here: no circuit may open, so what is kept is delivered as
    # soon as the destination answers again, not at its next probe.
    env = {"ROUTER_RELOAD": "false", "ROUTER_CIRCUIT_FAILURES": "0"}
    router = RouterProcess(tmp_path, rules, store_url=url, env=env)
    return router.start()


def replace_with_another_store(path: Path, tmp_path: Path) -> None:
    other = tmp_path / "another.db"
    done = subprocess.run(
        [sys.executable, "-m", "router", "migrate", "--store", f"sqlite:///{other}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    os.rename(other, path)


@pytest.mark.parametrize("how", ["deleted", "replaced", "wal deleted"])
def test_a_vanished_sqlite_file_stops_the_202s_and_is_recovered(
    tmp_path: Path, sink: HttpSink, how: str
) -> None:
    sink.default = Reply(503)  # jobs stay pending in the file that is about to vanish
    db = tmp_path / "router.db"
    router = start(tmp_path, sink, db)
    try:
        for seq in range(20):
            assert router.push(event(seq)).status_code == 202
        if how == "deleted":
            db.unlink()
        elif how == "replaced":
            replace_with_another_store(db, tmp_path)
        else:
            Path(f"{db}-wal").unlink()

        refused = router.push(event("after"))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"]
        assert refused.json() == {"error": "the store is unavailable; retry later"}
        ready = router.get("/readyz")
        assert ready.status_code == 503
        assert any("is gone" in problem for problem in ready.json()["problems"])
        # Still refused later, not only once: nothing that gets a 202 lands in a lost file.
        assert router.push(event("later")).status_code == 503
        errors = [line for line in router.log_lines() if line["level"] == "error"]
        assert any("file is gone" in line["message"] for line in errors), router.log()
    finally:
        router.kill()

    # What the orphaned file held was saved beside it: a worker on that copy delivers it all.
    (copy,) = tmp_path.glob("router.db.orphaned-*")
    sink.default = Reply(200)
    worker = RouterProcess(
        tmp_path, tmp_path / "rules", store_url=f"sqlite:///{copy}", command=("worker",)
    )
    worker.env["ROUTER_WORKER_PORT"] = "0"
    worker.start()
    try:
        poll(lambda: {json.loads(r.body)["seq"] for r in sink.requests} >= set(range(20)))
    finally:
        worker.stop()
    delivered = {json.loads(r.body)["seq"] for r in sink.requests}
    assert "after" not in delivered and "later" not in delivered


def test_a_file_overwritten_in_place_fails_readiness(tmp_path: Path, sink: HttpSink) -> None:
    db = tmp_path / "router.db"
    router = start(tmp_path, sink, db)
    try:
        assert router.get("/readyz").status_code == 200
        other = tmp_path / "other.db"
        replace_with_another_store(other, tmp_path)  # a store of its own: its own identity
        shutil.copyfile(other, db)  # same inode, other content (a backup restored with cp)
        ready = poll(lambda: (r := router.get("/readyz")).status_code == 503 and r)
        assert "was overwritten" in " ".join(ready.json()["problems"])
    finally:
        router.kill()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_readiness_fails_while_the_disk_is_full_and_recovers(
    tmp_path: Path, sink: HttpSink, small_disk: Path
) -> None:
    router = start(tmp_path, sink, small_disk / "router.db")
    filler = small_disk / "filler"
    try:
        with filler.open("wb") as out:  # leave the store almost no room
            while True:
                try:
                    out.write(b"\0" * 65536)
                    out.flush()
                except OSError:
                    break
        statuses = [router.push(event(seq, {"pad": "x" * 200_000})).status_code for seq in range(5)]
        assert 503 in statuses and 500 not in statuses
        ready = router.get("/readyz")
        assert ready.status_code == 503, ready.text
        filler.unlink()
        assert router.push(event("room again")).status_code == 202
        assert router.get("/readyz").status_code == 200
    finally:
        router.kill()


# -- any string the JSON parser accepts ----------------------------------------------------------

HOSTILE: list[tuple[str, bytes]] = [
    ("lone surrogate in id", b'{"id": "a\\ud800", "tableType": "PROFILE_TABLE", "data": {"v": 1}}'),
    ("lone low surrogate", b'{"id": "s2", "data": {"v": "\\udc00x", "w": "\\udfff\\ud800"}}'),
    ("surrogate in a key", b'{"id": "s3", "data": {"\\ud83d": "half an emoji"}}'),
    ("NUL in id and data", b'{"id": "n\\u0000ul", "data": {"v": "a\\u0000b"}}'),
    ("noncharacters", b'{"id": "s5", "data": {"v": "\\uffff\\ufffe\\ufeff"}}'),
    ("deep but storable", b'{"id": "s6", "data": {"v": ' + b"[" * 200 + b"]" * 200 + b"}}"),
    ("a 4000-digit integer", b'{"id": "s7", "data": {"v": ' + b"9" * 4000 + b"}}"),
    ("a long id", b'{"id": "' + b"i" * 100_000 + b'", "data": {"v": 1}}'),
    ("an object as id", b'{"id": {"nested": "\\ud800"}, "data": {"v": 1}}'),
]


async def _push_all(base: str, bodies: list[bytes]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=32)
    headers = {"Content-Type": "application/json", "X-Authorization": SECRET}
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/webhooks/actito", content=body, headers=headers) for body in bodies)
        )


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_hostile_strings_are_kept_exactly_beside_300_good_pushes(
    tmp_path: Path, sink: HttpSink, store: str
) -> None:
    with contextlib.ExitStack() as stack:
        url: str | None = None
        if store == "postgresql":
            try:
                url = stack.enter_context(fresh_database(server_url()))
            except Unavailable as exc:
                pytest.skip(str(exc))
        router = start(tmp_path, sink, url)
        stack.callback(router.kill)
        good = [json.dumps(event(seq)).encode() for seq in range(300)]
        bodies = good[:150] + [body for _, body in HOSTILE] + good[150:]
        responses = asyncio.run(_push_all(router.base, bodies))
        statuses = [r.status_code for r in responses]
        assert statuses == [202] * len(bodies), [
            (i, r.status_code, r.text) for i, r in enumerate(responses) if r.status_code != 202
        ]
        expected = [json.loads(body)["data"] for body in bodies]
        arrived = poll(lambda: len(sink.requests) >= len(bodies) and sink.requests)
        received = [json.loads(r.body) for r in arrived]
        # Forwarded exactly: every pushed item arrives once, each character as sent.
        for item in expected:
            assert item in received
        assert len(received) == len(expected)
    assert "Traceback" not in router.log()
