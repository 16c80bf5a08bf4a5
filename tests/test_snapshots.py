"""`router test --update`: snapshots written into the [[test.action]] tables of failing and new
tests, keeping the files' comments and layout; then the tests pass as written."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

RULES = """\
# The rules (this comment stays).
[[rule]]
name = "crm"
[rule.match]
operation = "CREATE"

[[rule.action]]
type = "http"
url = "https://crm.example.com/c/{{ data.id }}"
headers = { Authorization = "Bearer {{ secrets.TOKEN }}", X-At = "{{ now }}" }
body = '{"id": {{ data.id }}, "name": {{ data.name | tojson }}}'

[[rule.action]]
type = "email"
to = "ops@example.com"
subject = "New {{ data.id }}"
text = '''
Hello {{ data.name }},
received {{ now }}.
'''

[[rule]]
name = "audit"
[[rule.action]]
type = "log"
message = "seen {{ record.id }}"
"""

TESTS = """\
# Tests of the crm rule (this comment stays).

[[test]]
name = "passing"   # untouched
match = ["audit"]
[test.event]
id = "e-1"
operation = "UPDATE"
data = { id = 1 }

[[test.action]]
rule = "audit"
message = "seen e-1"   # right already

[[test]]
name = "failing"
match = ["crm"]
[test.event]
id = "e-2"
operation = "CREATE"
data = { id = 2, name = "Zoë" }

[[test.action]]
rule = "crm"
url = "https://crm.example.com/c/999"   # stale
body_json = { id = 999 }

[[test]]
name = "new"
match = ["crm"]
no_match = ["nothing-else"]
[test.event]
id = "e-3"
operation = "CREATE"
data = [{ id = 3, name = "Ann" }, { id = 4 }]
"""


def router(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_update_writes_snapshots_of_failing_and_new_tests(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    (rules / "tests").mkdir(parents=True)
    (rules / "crm.toml").write_text(RULES, encoding="utf-8")
    extra = '[[rule]]\nname = "nothing-else"\nenabled = false\n[[rule.action]]\n'
    (rules / "off.toml").write_text(extra + 'type = "log"\nmessage = "x"\n', encoding="utf-8")
    tests = rules / "tests" / "crm.toml"
    tests.write_text(TESTS, encoding="utf-8")
    before = router("test", "rules", cwd=tmp_path)
    assert before.returncode == 1 and "2 passed, 1 failed" in before.stdout

    updated = router("test", "--update", "rules", cwd=tmp_path)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert updated.stderr.splitlines() == [
        "updated failing (rules/tests/crm.toml:15): 1 [[test.action]] table",
        "updated new (rules/tests/crm.toml:28): 2 [[test.action]] tables",
    ]
    assert updated.stdout.splitlines()[-1] == "3 passed, 0 failed"
    text = tests.read_text(encoding="utf-8")
    # Comments and layout stay; the passing test is untouched.
    assert text.startswith(TESTS.split('[[test]]\nname = "failing"')[0])
    assert "# stale" in text and "# untouched" in text
    written = tomllib.loads(text)["test"]
    assert written[1]["action"] == [
        {
            "rule": "crm",
            "url": "https://crm.example.com/c/2",
            "body_json": {"id": 2, "name": "Zoë"},
        }
    ]
    # The new test: every action of the rule it must match, for each record it matches; the
    # value that reads `now` (a header, the e-mail text) is left out, and so is an action that
    # does not render (record 1 has no name for the e-mail).
    assert written[2]["action"] == [
        {
            "rule": "crm",
            "method": "POST",
            "url": "https://crm.example.com/c/3",
            "headers": {"Authorization": "Bearer <secret TOKEN>"},
            "body_json": {"id": 3, "name": "Ann"},
        },
        {"rule": "crm", "action": 1, "to": ["ops@example.com"], "subject": "New 3"},
    ]
    assert "nothing to update" in router("test", "--update", "rules", cwd=tmp_path).stderr


def test_update_writes_a_body_with_null_as_text_and_refuses_event_files(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.toml").write_text(
        '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "https://x.example/"\n'
        "body = '''\n{\"a\": {{ data.a | default(none) | tojson }}}\n'''\n\n"
        '[[test]]\nmatch = ["r"]\nevent = { data = { b = 1 } }\n',
        encoding="utf-8",
    )
    assert router("test", "--update", "rules", cwd=tmp_path).returncode == 0
    (test,) = tomllib.loads((rules / "r.toml").read_text())["test"]
    assert test["action"][0]["body"] == '{"a": null}\n'
    refused = router("test", "--update", "rules", "rules/r.toml", cwd=tmp_path)
    assert refused.returncode == 2 and "give no event files" in refused.stderr
