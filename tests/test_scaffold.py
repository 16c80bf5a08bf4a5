"""`router new`: a rule file written from each sample event passes `router check` and `router
test` as written, with its match filled from the event and an example of every action type."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from router.actions.registry import REGISTRY
from router.cli import main
from router.rulefiles.dryrun import run_tests
from router.rulefiles.loader import load

SAMPLES = sorted((Path(__file__).parent / "samples").glob("*.json"))


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name[:2] for p in SAMPLES])
def test_a_rule_from_each_sample_checks_and_tests_clean(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    assert main(["new", "from-sample", "--from", str(sample), "--dir", str(rules)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {rules / 'from-sample.toml'}")
    loaded = load(rules, secrets=None)
    assert loaded.ruleset is not None and loaded.diagnostics == []
    (outcome,) = run_tests(loaded.ruleset, loaded.tests)
    assert outcome.passed, outcome.failures
    text = (rules / "from-sample.toml").read_text(encoding="utf-8")
    for kind in REGISTRY:  # an example of every registered action type
        assert f'type = "{kind}"' in text
    written = tomllib.loads(text)
    (rule,) = written["rule"]
    assert len(rule["action"]) == 1  # the one live action logs; the others are commented out
    (test,) = written["test"]
    assert test["match"] == ["from-sample"] and test["action"]


def test_the_match_is_filled_from_the_event(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    samples = Path(__file__).parent / "samples"
    main(
        [
            "new",
            "data",
            "--from",
            str(samples / "03-data-v1-profile-table-update-one-by-one.json"),
            "--dir",
            str(rules),
        ]
    )
    main(
        [
            "new",
            "etl",
            "--from",
            str(samples / "16-trigger-v2-etl-execution-finished-one-by-one.json"),
            "--dir",
            str(rules),
        ]
    )
    data = tomllib.loads((rules / "data.toml").read_text())["rule"][0]["match"]
    assert data == {
        "tableType": "PROFILE_TABLE",
        "tableId": "16",
        "operation": "UPDATE",
        "fields": ["emailAddress"],
    }
    etl = tomllib.loads((rules / "etl.toml").read_text())["rule"][0]["match"]
    assert etl == {"condition": 'data."etl.executionStatus" != `null`'}
    assert load(rules, secrets=None).diagnostics == []


def test_router_new_from_the_command_line(tmp_path: Path) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    sample = (
        Path(__file__).parent
        / "samples"
        / "20-trigger-v1-scenario-custom-action-trigger-one-by-one.json"
    )
    (tmp_path / "rules").mkdir()
    (tmp_path / "event.json").write_bytes(sample.read_bytes())

    def router(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", *args],
            cwd=tmp_path,
            env={**clean, "ROUTER_RULES_DIR": "rules"},
            capture_output=True,
            text=True,
            timeout=60,
        )

    made = router("new", "loyalty-action", "--from", "event.json")
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[0] == "wrote rules/loyalty-action.toml"
    assert (
        tomllib.loads((tmp_path / "rules/loyalty-action.toml").read_text())["test"][0]["event"]
        == "../event.json"
    )
    assert router("check").returncode == 0
    tested = router("test")
    assert tested.returncode == 0 and tested.stdout.splitlines()[-1] == "1 passed, 0 failed"
    again = router("new", "loyalty-action", "--from", "event.json")
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = router("new", "../escape", "--from", "event.json")
    assert bad.returncode == 2 and "cannot name a rule file" in bad.stderr
