"""The example rules in rules/ are valid, their tests pass, and their sample events do what the
tests say (checked a second way, through the dry run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]
RULES = ROOT / "rules"
EVENTS = sorted((RULES / "events").glob("*.json"))


def router(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def file_tests() -> dict[Path, list[dict[str, Any]]]:
    """Each event file named by a [[test]] of rules/, with the tests that name it."""
    found: dict[Path, list[dict[str, Any]]] = {}
    for path in [*sorted(RULES.glob("*.toml")), *sorted(RULES.glob("tests/*.toml"))]:
        for test in tomllib.loads(path.read_text(encoding="utf-8")).get("test", []):
            if isinstance(test.get("event"), str):
                event = (path.parent / test["event"]).resolve()
                found.setdefault(event, []).append(test)
    return found


def test_the_examples_check_clean() -> None:
    done = router("check", "rules")
    assert done.returncode == 0, done.stdout
    summary = done.stdout.splitlines()[-1]
    assert summary.startswith("rules/: ") and ", 0 errors, " in summary
    # The only warnings: the two example secrets, unset here.
    warnings = [line for line in done.stdout.splitlines()[:-1]]
    assert all("is not set" in line for line in warnings), warnings


def test_the_example_tests_pass() -> None:
    done = router("test", "rules")
    assert done.returncode == 0, done.stdout + done.stderr
    passed, failed = done.stdout.splitlines()[-1].split(", ")
    assert failed == "0 failed" and int(passed.split()[0]) >= 8


def test_every_rule_is_exercised_by_a_test() -> None:
    done = router("test", "--format", "json", "rules", *(str(p.relative_to(ROOT)) for p in EVENTS))
    matched = {name for record in json.loads(done.stdout)["records"] for name in record["matched"]}
    names = {
        rule["name"]
        for path in RULES.glob("*.toml")
        for rule in tomllib.loads(path.read_text(encoding="utf-8")).get("rule", [])
    }
    assert names and matched == names


@pytest.mark.parametrize("event", EVENTS, ids=[p.name for p in EVENTS])
def test_each_sample_event_matches_what_its_test_says(event: Path) -> None:
    tests = file_tests().get(event.resolve())
    assert tests, f"no [[test]] uses {event.name}; add one so the sample stays true"
    done = router("test", "--format", "json", "rules", str(event.relative_to(ROOT)))
    assert done.returncode == 0, done.stderr
    matched = [set(record["matched"]) for record in json.loads(done.stdout)["records"]]
    for test in tests:
        for index, names in enumerate(matched):
            if "expect" in test:
                assert names == set(test["expect"]), test["name"]
            if "expect_per_record" in test:
                assert names == set(test["expect_per_record"][index]), test["name"]
            must = {*test.get("match", ()), *_per_record(test, "match_per_record", index)}
            never = {*test.get("no_match", ()), *_per_record(test, "no_match_per_record", index)}
            assert must <= names and not never & names, (test["name"], index, names)


def _per_record(test: dict[str, Any], key: str, index: int) -> list[str]:
    lists = test.get(key)
    return list(lists[index]) if lists else []


CATCH_ALL = """
[[rule]]
name = "zz-catch-all"
description = "A new rule a colleague adds: it matches every record"

[[rule.action]]
type = "log"
message = "seen {{ record.id }}"
"""


def test_adding_a_catch_all_rule_breaks_no_example_test(tmp_path: Path) -> None:
    # The example tests say which rules must (not) match, never the exact set: a rule file
    # added beside them, even one that matches everything, leaves them green.
    copy = tmp_path / "rules"
    shutil.copytree(RULES, copy)
    (copy / "00-catch-all.toml").write_text(CATCH_ALL, encoding="utf-8")
    done = router("test", str(copy))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].endswith(", 0 failed")
    dry = router("test", "--format", "json", str(copy), str(copy / "events"))
    assert all("zz-catch-all" in r["matched"] for r in json.loads(dry.stdout)["records"])
