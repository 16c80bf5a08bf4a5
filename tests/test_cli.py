"""`router check` and `router test` as a user runs them: a real subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SAMPLES = Path(__file__).parent / "samples"
CREATE = SAMPLES / "01-data-v1-profile-table-create-one-by-one.json"  # profile 1204, Marie
CREATE_BULK = SAMPLES / "02-data-v1-profile-table-create-bulk.json"  # 3 records
UNSUBSCRIBE = SAMPLES / "05-data-v1-profile-table-updated-subscription-one-by-one.json"

RULES = """\
[[rule]]
name = "crm"
[rule.match]
tableType = "PROFILE_TABLE"
operation = "CREATE"

[[rule.action]]
type = "http"
url = "https://crm.example.com/contacts/{{ data.profileId }}"
headers = { Authorization = "Bearer {{ secrets.CRM_TOKEN }}" }
body = '{"email": {{ data.emailAddress | tojson }}}'

[[rule.action]]
type = "email"
to = ["ops@example.com"]
subject = "New subscriber {{ data.emailAddress }}"
text = "Profile {{ data.profileId }}"
"""

MORE_RULES = """\
[[rule]]
name = "unsubscribe"
[rule.match]
operation = "UPDATED_SUBSCRIPTION"
condition = "data.Newsletter == `false`"

[[rule.action]]
type = "log"
level = "warning"
message = "profile {{ data.profileId }} left"

[[rule]]
name = "audit"
[[rule.action]]
type = "log"
message = "seen {{ record.id }}"
"""


def router(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> Any:
    """Run `python -m router ARGS` in `cwd` with no ROUTER_* variable but those in `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_rules(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    return write_rules(tmp_path / "rules", **{"10-crm": RULES, "20-more": MORE_RULES})


# ---------------------------------------------------------------- router check


def test_check_clean_rules_exit_0_with_a_summary(rules: Path) -> None:
    done = router("check", rules, cwd=rules.parent, env={"ROUTER_SECRET_CRM_TOKEN": "x"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [f"{rules}/: 3 rules in 2 files, 0 errors, 0 warnings"]


def test_check_reads_the_rules_dir_from_the_environment(rules: Path) -> None:
    done = router("check", cwd=rules.parent, env={"ROUTER_RULES_DIR": str(rules)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith(f"{rules}/: 3 rules in 2 files")


def test_check_reports_every_error_of_every_file_and_exits_1(tmp_path: Path) -> None:
    broken = RULES.replace('operation = "CREATE"', 'operation = "CREATE"\nconditon = "x"')
    broken_too = MORE_RULES.replace("data.Newsletter == `false`", "data.Newsletter ==")
    rules = write_rules(tmp_path / "rules", a=broken, b=broken_too)
    done = router("check", rules, cwd=tmp_path)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(
        line.startswith(f"{rules}/a.toml:6: rule 'crm': match.conditon:") and "condition" in line
        for line in lines
    ), lines
    assert any(line.startswith(f"{rules}/b.toml:5: rule 'unsubscribe': ") for line in lines)
    assert lines[-1].endswith(", 2 errors, 1 warning") or lines[-1].endswith(
        ", 2 errors, 0 warnings"
    )


@pytest.mark.parametrize(
    ("options", "env", "status", "severity"),
    [
        ((), {}, 0, "warning"),
        (("--strict",), {}, 1, "error"),
        (("--strict",), {"ROUTER_SECRET_CRM_TOKEN": "set"}, 0, None),
        ((), {"ROUTER_SECRET_CRM_TOKEN": "set"}, 0, None),
    ],
)
def test_check_unset_secrets_warn_or_fail_with_strict(
    rules: Path, options: tuple[str, ...], env: dict[str, str], status: int, severity: str | None
) -> None:
    done = router("check", "--format", "json", *options, rules, cwd=rules.parent, env=env)
    assert done.returncode == status, done.stdout + done.stderr
    document = json.loads(done.stdout)
    secrets = [d for d in document["diagnostics"] if "CRM_TOKEN" in d["message"]]
    if severity is None:
        assert secrets == []
    else:
        assert [d["severity"] for d in secrets] == [severity]
        assert "ROUTER_SECRET_CRM_TOKEN" in secrets[0]["message"]


def test_check_reads_secrets_from_a_dotenv_file_in_the_working_directory(rules: Path) -> None:
    (rules.parent / ".env").write_text("ROUTER_SECRET_CRM_TOKEN=from-dotenv\n", encoding="utf-8")
    done = router("check", "--strict", rules, cwd=rules.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_json_document_shape(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", a=RULES.replace('"http"', '"htp"'))
    done = router("check", "--format", "json", rules, cwd=tmp_path)
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert set(document) == {"ok", "rules", "files", "version", "diagnostics"}
    assert document["ok"] is False and document["files"] == 1
    assert document["rules"] is None and document["version"] is None
    (error,) = [d for d in document["diagnostics"] if d["severity"] == "error"]
    assert set(error) == {"file", "line", "rule", "key", "severity", "message"}
    assert (error["file"], error["line"], error["rule"]) == (f"{rules}/a.toml", 8, "crm")

    clean = router("check", "--format", "json", write_rules(tmp_path / "ok", a=RULES), cwd=tmp_path)
    document = json.loads(clean.stdout)
    assert clean.returncode == 0
    assert document["ok"] is True and document["rules"] == 1
    assert isinstance(document["version"], str) and document["version"]


def test_check_a_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    done = router("check", tmp_path / "nope", cwd=tmp_path)
    assert done.returncode == 2
    assert "nope" in done.stderr and "does not exist" in done.stderr


# ---------------------------------------------------------------- router test EVENT.json


def test_dry_run_json_document_follows_the_contract(rules: Path) -> None:
    done = router("test", "--format", "json", rules, CREATE, UNSUBSCRIBE, cwd=rules.parent)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)["records"]
    assert [r["index"] for r in records] == [0, 1]
    assert [r["matched"] for r in records] == [["crm", "audit"], ["unsubscribe", "audit"]]
    assert [r["file"] for r in records] == [CREATE.as_posix(), UNSUBSCRIBE.as_posix()]

    http, email, log = records[0]["actions"]
    assert {k: http[k] for k in ("rule", "type", "method", "url", "headers", "body")} == {
        "rule": "crm",
        "type": "http",
        "method": "POST",
        "url": "https://crm.example.com/contacts/1204",
        "headers": {"Authorization": "Bearer <secret CRM_TOKEN>"},
        "body": '{"email": "marie.dupont@example.be"}',
    }
    assert {k: email[k] for k in ("rule", "type", "to", "subject", "text")} == {
        "rule": "crm",
        "type": "email",
        "to": ["ops@example.com"],
        "subject": "New subscriber marie.dupont@example.be",
        "text": "Profile 1204",
    }
    assert "html" not in email
    assert {k: log[k] for k in ("rule", "type", "level", "message")} == {
        "rule": "audit",
        "type": "log",
        "level": "info",
        "message": "seen 3f2b8c1e-6a4d-4f0e-9b7a-2c5d8e1f4a60",
    }
    # JSON always says why the other rules did not match, in rule-set order.
    assert records[0]["not_matched"] == [
        {
            "rule": "unsubscribe",
            "reason": 'operation: wanted "UPDATED_SUBSCRIPTION", saw "CREATE"',
            "explain": {"key": "operation", "wanted": ["UPDATED_SUBSCRIPTION"], "saw": "CREATE"},
        }
    ]
    assert [m["rule"] for m in records[1]["not_matched"]] == ["crm"]


def test_dry_run_numbers_records_across_files_in_input_order(rules: Path) -> None:
    done = router("test", "--format", "json", rules, CREATE_BULK, CREATE, cwd=rules.parent)
    records = json.loads(done.stdout)["records"]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["file"] for r in records] == [CREATE_BULK.as_posix()] * 3 + [CREATE.as_posix()]
    urls = [r["actions"][0]["url"].rsplit("/", 1)[1] for r in records]
    assert urls == ["1205", "1206", "1207", "1204"]


def test_dry_run_text_report_with_explain(rules: Path) -> None:
    plain = router("test", rules, UNSUBSCRIBE, cwd=rules.parent)
    assert plain.returncode == 0, plain.stderr
    assert "matched: unsubscribe, audit" in plain.stdout
    assert "[warning] profile 1204 left" in plain.stdout
    assert "not matched" not in plain.stdout
    assert "nothing was sent" in plain.stdout

    explained = router("test", "--explain", rules, UNSUBSCRIBE, cwd=rules.parent)
    assert explained.returncode == 0
    assert 'not matched: crm: operation: wanted "CREATE", saw "UPDATED_SUBSCRIPTION"' in (
        explained.stdout
    )


def test_explain_shows_the_failing_part_and_the_values_it_saw(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        a=MORE_RULES.replace(
            "data.Newsletter == `false`",
            "data.Newsletter == `false` || data.Newsletter == 'false'",
        ),
    )
    event = tmp_path / "e.json"
    event.write_text(
        json.dumps({"id": "e", "operation": "UPDATED_SUBSCRIPTION", "data": {"Newsletter": True}})
    )
    text = router("test", "--explain", rules, event, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    reason = "condition: data.Newsletter == `false` || data.Newsletter == 'false' gave false"
    lines = text.stdout.splitlines()
    at = lines.index(f"    not matched: unsubscribe: {reason}")
    assert lines[at + 1 : at + 3] == [
        "      data.Newsletter == `false` gave false: data.Newsletter is true",
        "      data.Newsletter == 'false' gave false: data.Newsletter is true",
    ]
    done = router("test", "--format", "json", rules, event, cwd=tmp_path)
    (miss,) = json.loads(done.stdout)["records"][0]["not_matched"]
    assert miss["reason"] == reason
    assert [part["values"] for part in miss["explain"]["parts"]] == [
        [{"expression": "data.Newsletter", "value": True}]
    ] * 2
    assert "lines" not in miss


def test_dry_run_never_shows_a_secret_value(rules: Path) -> None:
    env = {"ROUTER_SECRET_CRM_TOKEN": "s3cr3t-value-123"}
    for fmt in ("text", "json"):
        done = router("test", "--format", fmt, rules, CREATE, cwd=rules.parent, env=env)
        assert done.returncode == 0
        assert "s3cr3t-value-123" not in done.stdout + done.stderr
        assert "Bearer <secret CRM_TOKEN>" in done.stdout


def test_dry_run_takes_rules_from_settings_when_the_first_path_is_a_file(
    rules: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = router("test", CREATE, cwd=elsewhere)
    assert done.returncode == 2  # the default, ./rules, does not exist here
    assert "rules" in done.stderr and "does not exist" in done.stderr

    env = {"ROUTER_RULES_DIR": str(rules)}
    done = router("test", "--format", "json", CREATE, cwd=elsewhere, env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["records"][0]["matched"] == ["crm", "audit"]


def test_dry_run_expands_a_directory_of_events(rules: Path, tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.mkdir()
    (events / "b.json").write_bytes(UNSUBSCRIBE.read_bytes())
    (events / "a.json").write_bytes(CREATE.read_bytes())
    done = router("test", "--format", "json", rules, events, cwd=tmp_path)
    assert [r["file"] for r in json.loads(done.stdout)["records"]] == [
        (events / "a.json").as_posix(),
        (events / "b.json").as_posix(),
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"id": 1, "tableType": "PROFILE_TABLE"}', "data is missing"),
        (b"[]", "empty list"),
    ],
)
def test_dry_run_a_bad_event_file_exits_2(
    rules: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    done = router("test", rules, CREATE, bad, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert str(bad) in done.stderr and message in done.stderr


def test_dry_run_a_missing_event_file_exits_2(rules: Path, tmp_path: Path) -> None:
    done = router("test", rules, tmp_path / "missing.json", cwd=tmp_path)
    assert done.returncode == 2
    assert "missing.json" in done.stderr


def test_dry_run_shows_a_render_error_and_exits_1(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", a=RULES.replace('data.profileId }}"', 'data.nope }}"'))
    done = router("test", rules, CREATE, cwd=tmp_path)
    assert done.returncode == 1
    assert "ERROR" in done.stdout and "nope" in done.stdout
    as_json = router("test", "--format", "json", rules, CREATE, cwd=tmp_path)
    assert as_json.returncode == 1
    (broken, *_) = json.loads(as_json.stdout)["records"][0]["actions"]
    assert broken["rule"] == "crm" and broken["type"] == "http" and "nope" in broken["error"]


def test_a_rule_set_with_errors_is_reported_like_check(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", a=RULES.replace('"http"', '"htp"'))
    for args in ((rules,), (rules, CREATE)):
        done = router("test", *args, cwd=tmp_path)
        assert done.returncode == 1
        assert f"{rules}/a.toml:8: rule 'crm'" in done.stdout


# ---------------------------------------------------------------- router test (the [[test]] tables)

PASSING = """\
[[test]]
name = "a subscriber reaches the CRM"
event = "../events/create.json"
expect = ["crm", "audit"]

[[test.action]]
rule = "crm"
url = "https://crm.example.com/contacts/1204"
headers = { Authorization = "Bearer <secret CRM_TOKEN>" }
body_json = { email = "marie.dupont@example.be" }

[[test.action]]
rule = "crm"
action = 1
to = ["ops@example.com"]
"""

FAILING = """\
[[test]]
name = "an unsubscribe is only logged"
event = "../events/unsubscribe.json"
expect = ["audit"]

[[test]]
name = "the CRM gets the new address"
event = "../events/create.json"
expect = ["crm", "audit"]

[[test.action]]
rule = "crm"
body_json = { email = "someone.else@example.be" }
"""


@pytest.fixture
def tested(rules: Path) -> Path:
    events = rules / "events"
    events.mkdir()
    (events / "create.json").write_bytes(CREATE.read_bytes())
    (events / "unsubscribe.json").write_bytes(UNSUBSCRIBE.read_bytes())
    (rules / "tests").mkdir()
    (rules / "tests" / "pass.toml").write_text(PASSING, encoding="utf-8")
    return rules


def test_rule_tests_that_pass_exit_0(tested: Path) -> None:
    env = {"ROUTER_SECRET_CRM_TOKEN": "real-token"}  # tests still see the placeholder
    done = router("test", tested, cwd=tested.parent, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"PASS a subscriber reaches the CRM ({tested}/tests/pass.toml:1)" in done.stdout
    assert done.stdout.splitlines()[-1] == "1 passed, 0 failed"
    assert "real-token" not in done.stdout + done.stderr


def test_rule_tests_that_fail_show_expected_and_actual_and_exit_1(tested: Path) -> None:
    (tested / "tests" / "fail.toml").write_text(FAILING, encoding="utf-8")
    done = router("test", tested, cwd=tested.parent)
    assert done.returncode == 1
    out = done.stdout
    shown = f"{tested}/tests/fail.toml"
    assert f"FAIL an unsubscribe is only logged ({shown}:1)" in out
    assert (
        f"  {shown}:1: record 0: expect: the rules that match differ from the expected ones\n"
        "    expected: audit\n"
        "    actual:   unsubscribe, audit\n"
    ) in out
    assert (
        f"  {shown}:11: record 0: rule 'crm' action 0: body_json: the rendered body differs\n"
        '    expected: {"email": "someone.else@example.be"}\n'
        '    actual:   {"email": "marie.dupont@example.be"}\n'
    ) in out
    assert out.splitlines()[-1] == "1 passed, 2 failed"


def test_rule_tests_json(tested: Path) -> None:
    (tested / "tests" / "fail.toml").write_text(FAILING, encoding="utf-8")
    done = router("test", "--format", "json", tested, cwd=tested.parent)
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert (document["ok"], document["passed"], document["failed"]) == (False, 1, 2)
    by_name = {test["name"]: test for test in document["tests"]}
    assert by_name["a subscriber reaches the CRM"]["passed"] is True
    (failure,) = by_name["an unsubscribe is only logged"]["failures"]
    assert failure["expected"] == ["audit"]
    assert failure["actual"] == ["unsubscribe", "audit"]
    assert (failure["file"], failure["line"]) == (f"{tested}/tests/fail.toml", 1)


def test_no_rule_tests_is_not_a_failure(rules: Path) -> None:
    done = router("test", rules, cwd=rules.parent)
    assert done.returncode == 0
    assert "no [[test]] tables" in done.stdout
    assert done.stdout.splitlines()[-1] == "0 passed, 0 failed"


# ---------------------------------------------------------------- help


@pytest.mark.parametrize("command", [(), ("check",), ("test",), ("new",), ("backtest",)])
def test_help_is_complete_with_examples(tmp_path: Path, command: tuple[str, ...]) -> None:
    done = router(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "examples:" in done.stdout or "router check rules/" in done.stdout
    words = {
        (): ("check", "test", "new", "backtest"),
        ("check",): ("--strict", "--format", "RULES_DIR"),
        ("test",): ("--explain", "--update", "--format", "RULES_DIR", "EVENT.json", "[[test]]"),
        ("new",): ("RULE_NAME", "--from", "--dir"),
        ("backtest",): ("NEW_RULES_DIR", "--since", "--store", "--format", "--serving"),
    }
    for word in words[command]:
        assert word in done.stdout


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    done = router(cwd=tmp_path)
    assert done.returncode == 2
    assert "COMMAND" in done.stderr


def test_invalid_settings_are_a_usage_error_in_one_line(tmp_path: Path) -> None:
    done = router("check", cwd=tmp_path, env={"ROUTER_PORT": "eighty"})
    assert done.returncode == 2
    assert done.stderr.startswith("router check: error: invalid settings: ROUTER_PORT: ")
    assert len(done.stderr.splitlines()) == 1
