"""`router backtest` as a user runs it: records accepted by the real engine into a real store
(SQLite, and PostgreSQL when available), new rules compared with the serving ones, nothing sent."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.engine import Engine
from router.events import normalise
from router.rulefiles.loader import load_rules
from router.store import open_store
from tests.store.conftest import Backend, _postgres

SERVING = """
[[rule]]
name = "crm"
[rule.match]
operation = "CREATE"
[[rule.action]]
type = "http"
url = "https://crm.example.com/c/{{ data.id }}"
headers = { Authorization = "Bearer {{ secrets.TOKEN }}" }
body = '{"email": {{ data.email | tojson }}}'

[[rule]]
name = "audit"
[[rule.action]]
type = "log"
message = "seen {{ record.id }} at {{ now }}"

[[rule]]
name = "deletes"
[rule.match]
operation = "DELETE"
[[rule.action]]
type = "log"
message = "gone"
"""

NEW = (
    SERVING.replace(
        """body = '{"email": {{ data.email | tojson }}}'""",
        """body = '{"email": {{ data.email | tojson }}, "tier": {{ data.tier | tojson }}}'""",
    ).split('[[rule]]\nname = "deletes"')[0]
    + """
[[rule]]
name = "gold"
[rule.match]
condition = "data.tier == 'Gold'"
[[rule.action]]
type = "log"
message = "gold {{ data.id }}"
"""
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'router.db'}"
    else:
        backend: Backend
        for backend in _postgres():
            yield backend.url


def write(directory: Path, text: str) -> Path:
    directory.mkdir()
    (directory / "rules.toml").write_text(text, encoding="utf-8")
    return directory


def accept(url: str, rules: Path, pushes: list[tuple[float, dict[str, Any]]]) -> None:
    async def main() -> None:
        store = open_store(url)
        await store.open()
        try:
            for at, push in pushes:
                engine = Engine(store, load_rules(rules), dedupe_window=0, clock=lambda at=at: at)
                await engine.accept(normalise(push))
        finally:
            await store.close()

    asyncio.run(main())


def backtest(tmp_path: Path, *args: str | Path, serving: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env = {
        **clean,
        "ROUTER_RULES_DIR": serving.name,  # relative to the working directory, as a user writes
        "ROUTER_SECRET_TOKEN": "s3cr3t-token-value",
    }
    shown = [a.name if isinstance(a, Path) else a for a in args]
    return subprocess.run(
        [sys.executable, "-m", "router", "backtest", *shown],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_backtest_reports_per_rule_what_new_rules_would_change(
    tmp_path: Path, store_url: str
) -> None:
    serving = write(tmp_path / "rules", SERVING)
    new = write(tmp_path / "next", NEW)
    now = time.time()
    accept(
        store_url,
        serving,
        [
            (now - 10 * 86400, {"id": "old", "operation": "CREATE", "data": {"id": 1}}),
            (
                now - 60,
                {
                    "id": "bulk",
                    "operation": "CREATE",
                    "data": [
                        {"id": 2, "email": "a@example.com", "tier": "Gold"},
                        {"id": 3, "email": "b@example.com", "tier": "Silver"},
                    ],
                },
            ),
            (now - 30, {"id": "del", "operation": "DELETE", "data": {"id": 4, "tier": "Gold"}}),
        ],
    )
    done = backtest(
        tmp_path, new, "--since", "1d", "--store", store_url, "--format", "json", serving=serving
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "s3cr3t-token-value" not in done.stdout
    assert report["records"] == 3  # the 10-day-old record is outside --since
    by_rule = {rule["rule"]: rule for rule in report["rules"]}
    assert report["unchanged"] == ["audit"]  # `now` in its message changes nothing
    crm = by_rule["crm"]
    assert (crm["newly_matching"], crm["no_longer_matching"], crm["changed"]) == (0, 0, 2)
    first = crm["examples"]["changed"][0]
    assert first["event_id"] == "bulk"
    assert first["actions"] == [
        {
            "action": 0,
            "changed": {
                "body": {
                    "before": '{"email": "a@example.com"}',
                    "after": '{"email": "a@example.com", "tier": "Gold"}',
                }
            },
        }
    ]
    gold = by_rule["gold"]
    assert (gold["newly_matching"], gold["no_longer_matching"], gold["changed"]) == (2, 0, 0)
    assert [e["event_id"] for e in gold["examples"]["newly_matching"]] == ["bulk", "del"]
    deletes = by_rule["deletes"]
    assert (deletes["newly_matching"], deletes["no_longer_matching"]) == (0, 1)

    everything = backtest(tmp_path, new, "--store", store_url, serving=serving)
    assert everything.returncode == 0, everything.stderr
    lines = everything.stdout.splitlines()
    assert lines[0] == "next/ against rules/ (serving), on 4 records kept in the store:"
    assert "  crm: 2 records rendered differently" in lines  # both fail on record 1 alike
    assert "  gold: 2 records newly matched" in lines
    assert "  deletes: 1 record no longer matched" in lines
    assert "    no longer matched: event del (" in "\n".join(lines)
    assert lines[-1] == "Nothing was sent."


def test_backtest_refuses_new_rules_with_errors_and_a_bad_duration(tmp_path: Path) -> None:
    serving = write(tmp_path / "rules", SERVING)
    broken = write(tmp_path / "next", '[[rule]]\nname = "x"\n')
    url = f"sqlite:///{tmp_path / 'router.db'}"
    accept(url, serving, [])
    done = backtest(tmp_path, broken, "--store", url, serving=serving)
    assert done.returncode == 1
    assert done.stderr.startswith("router backtest: error: the new rules in next/ have errors:")
    assert "next/rules.toml:1: rule 'x': action: is missing" in done.stderr
    wrong = backtest(tmp_path, serving, "--since", "a week", serving=serving)
    assert wrong.returncode == 2
    assert "write a duration such as 30m, 12h or 7d" in wrong.stderr
