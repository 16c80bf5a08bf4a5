"""Batch actions in the rule files: `router check` names every mistake with its file and line,
and `router test` shows the rendered batch of a BULK event (and checks it in [[test]] tables)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from router.events import normalise
from router.rulefiles.dryrun import dry_run, run_tests
from router.rulefiles.loader import load
from router.rulefiles.snapshots import update

SAMPLES = Path(__file__).parent.parent / "samples"
BULK = SAMPLES / "02-data-v1-profile-table-create-bulk.json"

BODY = (
    '\'{"profiles": [{% for r in records %}{{ r.data.emailAddress | tojson }}'
    "{% if not loop.last %},{% endif %}{% endfor %}]}'"
)
GOOD = f"""
[[rule]]
name = "crm"
[rule.match]
tableType = "PROFILE_TABLE"
[[rule.action]]
type = "http"
url = "https://crm.example.com/bulk"
body = {BODY}
batch = {{ max_records = 2, max_wait = "2s" }}
"""


def write(tmp_path: Path, text: str) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir(exist_ok=True)
    (directory / "crm.toml").write_text(text)
    return directory


def problems(tmp_path: Path, text: str) -> list[tuple[int, str]]:
    result = load(write(tmp_path, text))
    return [(d.line, f"{d.key}: {d.message}") for d in result.diagnostics]


def test_bad_sizes_durations_and_names_are_reported_with_their_line(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """
[[rule]]
name = "one"
[[rule.action]]
type = "http"
url = "https://crm.example.com/{{ data.list }}"
batch = { max_records = 0, max_wait = "soon" }

[[rule]]
name = "two"
[[rule.action]]
type = "http"
url = "https://crm.example.com/x"
body = "{{ records | tojson }}"

[[rule]]
name = "three"
[[rule.action]]
type = "http"
url = "https://crm.example.com/x"
batch = { max_wait = 2, size = 3 }

[[rule]]
name = "four"
[[rule.action]]
type = "log"
batch = { max_records = 10 }
""",
    )
    assert (6, found[0][1]) == found[0] and "name 'data' is not available in a batch" in found[0][1]
    assert found[1] == (
        7,
        "action[0].batch.max_records: 0 is out of range; use an integer from 1 to 10000",
    )
    assert found[2][0] == 7 and "'soon' is not a duration" in found[2][1]
    assert found[3][0] == 14 and "name 'records' is available only to a batch action" in found[3][1]
    assert found[4][0] == 21 and found[4][1].startswith("action[0].batch")
    assert any(line == 21 and "max_records" in text for line, text in found)
    assert any(line == 21 and "size" in text for line, text in found)
    assert any(line == 27 and "only http actions have batch" in text for line, text in found)


def test_a_batch_action_cannot_also_fetch(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("batch =", 'enrich = ["profile"]\nbatch ='))
    assert any("enrich: is not available to a batch action" in text for _, text in found)


def test_a_dry_run_renders_the_batches_of_a_bulk_event(tmp_path: Path) -> None:
    result = load(write(tmp_path, GOOD))
    assert result.ruleset is not None, result.diagnostics
    records = normalise(json.loads(BULK.read_text()))
    document = dry_run(result.ruleset, records, explain=False)
    assert [entry["actions"][0]["batch"] for entry in document["records"]] == [0, 0, 1]
    batches = document["batches"]
    assert [batch["records"] for batch in batches] == [[0, 1], [2]]
    assert json.loads(batches[0]["body"]) == {
        "profiles": ["jan.peeters@example.be", "sophie.martin@example.fr"]
    }
    assert json.loads(batches[1]["body"]) == {"profiles": ["tom.baker@example.co.uk"]}


def test_a_batch_without_a_body_sends_the_list_of_data(tmp_path: Path) -> None:
    result = load(write(tmp_path, GOOD.replace(f"body = {BODY}\n", "")))
    assert result.ruleset is not None, result.diagnostics
    records = normalise(json.loads(BULK.read_text()))
    batches = dry_run(result.ruleset, records, explain=False)["batches"]
    assert json.loads(batches[0]["body"]) == [record["data"] for record in records[:2]]


def test_a_rule_test_checks_the_batch_its_record_goes_out_in(tmp_path: Path) -> None:
    test = f"""
[[test]]
name = "bulk"
event = "{BULK.as_posix()}"
match = ["crm"]
[[test.action]]
rule = "crm"
record = 2
body_json = {{ profiles = ["tom.baker@example.co.uk"] }}
[[test.action]]
rule = "crm"
record = 1
body_json = {{ profiles = ["jan.peeters@example.be"] }}
"""
    result = load(write(tmp_path, GOOD + test))
    assert result.ruleset is not None, result.diagnostics
    outcome = run_tests(result.ruleset, result.tests)[0]
    assert len(outcome.failures) == 1
    failure = outcome.failures[0]
    assert failure.record == 1
    assert failure.actual == {"profiles": ["jan.peeters@example.be", "sophie.martin@example.fr"]}


def test_update_writes_the_batch_each_record_goes_out_in(tmp_path: Path) -> None:
    test = f"""
[[test]]
name = "bulk"
event = "{BULK.as_posix()}"
match = ["crm"]
"""
    directory = write(tmp_path, GOOD + test)
    result = load(directory)
    assert result.ruleset is not None, result.diagnostics
    written = update(result.ruleset, run_tests(result.ruleset, result.tests), now=datetime.now(UTC))
    assert len(written) == 1
    again = load(directory)
    assert again.ruleset is not None, again.diagnostics
    (outcome,) = run_tests(again.ruleset, again.tests)
    assert outcome.passed, outcome.failures
    bodies = [action.values["body_json"] for action in again.tests[0].actions]
    pair = {"profiles": ["jan.peeters@example.be", "sophie.martin@example.fr"]}
    assert bodies == [pair, pair, {"profiles": ["tom.baker@example.co.uk"]}]


def test_event_values_in_a_batch_url_cannot_change_where_it_goes(tmp_path: Path) -> None:
    rule = GOOD.replace(
        'url = "https://crm.example.com/bulk"',
        'url = "https://crm.example.com/lists/{{ records[0].data.emailAddress }}"',
    )
    result = load(write(tmp_path, rule))
    assert result.ruleset is not None, result.diagnostics
    record = {"id": "1", "tableType": "PROFILE_TABLE", "data": {"emailAddress": "x/../../a?b#c"}}
    (batch,) = dry_run(result.ruleset, [record], explain=False)["batches"]
    assert batch["url"] == "https://crm.example.com/lists/x%2F..%2F..%2Fa%3Fb%23c"
