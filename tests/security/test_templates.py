"""Attacks on the templates: each is refused with its exact message, within about the time
limit, in a process whose memory stays small; `router test` and `router check` stay quick on
them; and a real `router serve` keeps answering while it renders the worst of them.

Each attack runs in a fresh interpreter that reports its own peak resident memory: VmHWM,
counted from its start (getrusage and wait4 would include the test process's memory, which the
child shares until it starts Python). Before these limits, the same templates ran for minutes or
reached 1 to 3 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink

ROOT = Path(__file__).parents[2]
LIMIT = 1048576  # ROUTER_TEMPLATE_MAX_BYTES by default
TIMEOUT = 1.0  # ROUTER_TEMPLATE_TIMEOUT by default, seconds
SLACK = 0.5  # seconds of CPU time an attack may take beyond the time limit
MEMORY_GROWTH = 64 * 1024  # KiB an attack may add to the peak of a harmless render

PEAK = """
def peak_kib():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
"""

# Compiles and renders argv[1] as an http body, under the default limits, for a record whose
# data holds a 10,000-item list and a text of two million characters; prints what happened.
CHILD = (
    PEAK
    + """
import json, sys, time
from router.exceptions import RenderError
from router.template_limits import RenderLimits
from router.sandbox import PlaceholderSecrets
from router.templating import TemplateProblem, build_context, compile_template

record = {
    "id": "attack",
    "data": {"items": list(range(10000)), "text": "x" * 1000, "big": "a" * 2000000},
}
# CPU time, as the limit counts it: a busy machine may stretch the clock time of a render.
started = time.process_time()
try:
    template = compile_template(sys.argv[1])
    context = build_context(record, rule="attack", delivery_id="d", secrets=PlaceholderSecrets())
    with RenderLimits().applied():
        outcome = {"rendered": len(template.render(context, where="body"))}
except (RenderError, TemplateProblem) as exc:
    outcome = {"error": str(exc)}
outcome["seconds"] = time.process_time() - started
outcome["peak_kib"] = peak_kib()
print(json.dumps(outcome))
"""
)

# `router ARGS...`, then its peak memory as the last line of stderr.
ROUTER = (
    PEAK
    + """
import sys
from router.cli import main
status = main(sys.argv[1:])
print(f"peak-kib {peak_kib()}", file=sys.stderr)
sys.exit(status)
"""
)


def router_command(
    *args: str, env: Mapping[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """Run `router ARGS...`; returns the process, its seconds and its peak memory (KiB)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", ROUTER, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    seconds = time.monotonic() - started
    *_, last = done.stderr.splitlines() or [""]
    assert last.startswith("peak-kib "), done.stderr
    return done, seconds, int(last.split()[1])


def attack(source: str) -> tuple[dict[str, Any], int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, source], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stderr
    outcome: dict[str, Any] = json.loads(done.stdout)
    return outcome, outcome.pop("peak_kib")


@pytest.fixture(scope="module")
def harmless_peak() -> int:
    outcome, peak = attack("{{ data['items'] | length }} {{ data.text | upper | length }}")
    assert outcome["rendered"] == 10
    return peak


def too_large(what: str) -> str:
    return (
        f"template for body: {what} would exceed the limit of {LIMIT} characters "
        "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
    )


TOO_SLOW = (
    "template for body: rendering took longer than 1 s (ROUTER_TEMPLATE_TIMEOUT); simplify the "
    "template or raise the limit"
)
OUTPUT_TOO_LARGE = (
    f"template for body: the rendered value exceeds the limit of {LIMIT} bytes "
    "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
)
DIGITS = "would build a number of more than 4300 digits; use smaller numbers"
# Each item: a list of the same long text, nested: 8 ** 4 copies of 100,000 characters.
NESTED = (
    "{% set a = 'x' * 100000 %}{% set b = [a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c] %}"
    "{{ [d, d, d, d, d, d, d, d] | length }}"
)
# The worst template: loops inside loops over 10,000 items, each iteration reading a whole
# long text in one call (time the loop cannot interrupt, and the interpreter's lock held).
NESTED_LOOPS = (
    "{% for a in data['items'] %}{% for b in data['items'] %}"
    "{% if data.big.count('a') == a * b %}{% endif %}{% endfor %}{% endfor %}"
)
BUILT = (
    f"template for body: the templates of this action build more than {32 * LIMIT} characters "
    "in all (32 times ROUTER_TEMPLATE_MAX_BYTES); make them build less or raise the limit"
)
# Forty statements, each keeping another megabyte.
MANY_SETS = "".join(f"{{% set a{n} = 'x' * 1000000 %}}" for n in range(40))

ATTACKS = [
    # Numbers: ** by the size of its result, so chained powers stop at the first.
    ("{{ ((9 ** 999) ** 999) ** 999 }}", f"template for body: ** {DIGITS}"),
    ("{{ 2 ** 100000 }}", f"template for body: ** {DIGITS}"),
    (
        "{% set a = 9 ** 999 %}{% set b = a * a %}{% set c = b * b %}{{ c * c }}",
        f"template for body: * {DIGITS}",
    ),
    # Repetition and joining.
    ("{{ 'x' * 999999999 }}", too_large("repeating a text")),
    ("{{ ['x'] * 999999999 }}", too_large("repeating a list")),
    ("{{ [data.text] * 10000 }}", too_large("repeating a list")),
    ("{{ ('x' * 1000000) ~ ('x' * 1000000) }}", too_large("~")),
    ("{{ ('x' * 1000000) + ('x' * 1000000) }}", too_large("+")),
    (NESTED, too_large("this list")),
    # Padding and widths: filters, str methods and both kinds of format.
    ("{{ 'x' | center(1000000000) }}", too_large("the center filter")),
    ("{{ 'x'.center(1000000000) }}", too_large("center()")),
    ("{{ 'x'.ljust(1000000000) }}", too_large("ljust()")),
    ("{{ 'x'.rjust(1000000000) }}", too_large("rjust()")),
    ("{{ 'x'.zfill(1000000000) }}", too_large("zfill()")),
    ("{{ '\t'.expandtabs(1000000000) }}", too_large("expandtabs()")),
    ("{{ ('\t' * 1000).expandtabs(10000) }}", too_large("expandtabs()")),
    ("{{ 'x' | indent(1000000000) }}", too_large("the indent filter")),
    ("{{ ('x\n' * 40000) | indent(100) }}", too_large("the indent filter")),
    (
        "{{ ('a b ' * 20000) | wordwrap(1, wrapstring='y' * 1000) }}",
        too_large("the wordwrap filter"),
    ),
    (
        "{{ ('a ' * 60000) | wordwrap(1) }}",
        "template for body: the wordwrap filter takes at most 100000 characters; give it a "
        "shorter text",
    ),
    ("{{ '%999999999s' % 'x' }}", too_large("% formatting")),
    ("{{ '%*s' % (999999999, 'x') }}", too_large("% formatting")),
    ("{{ '%.999999999f' % 1.0 }}", too_large("% formatting")),
    ("{{ '%(a)999999999s' % {'a': 1} }}", too_large("% formatting")),
    ("{{ '%999999999s' | format('x') }}", too_large("the format filter")),
    ("{{ '{:999999999}'.format('x') }}", too_large("format()")),
    ("{{ '{0:{1}}'.format('x', 999999999) }}", too_large("format()")),
    ("{{ '{a:>999999999}'.format_map({'a': 1}) }}", too_large("format()")),
    ("{{ ('{0}' * 100000).format(data.text) }}", too_large("format()")),
    # Joins and replacements, measured before they are made.
    ("{{ ('x' * 100000) | list | join('y' * 100) }}", too_large("the join filter")),
    ("{{ ('y' * 1000).join('x' * 1000000) }}", too_large("join()")),
    ("{{ ('x' * 1000000) | replace('x', 'yyyy') }}", too_large("the replace filter")),
    ("{{ ('x' * 1000).replace('', 'y' * 10000) }}", too_large("replace()")),
    (
        "{% for s in ('x' * 1000000) | map('center', 1000) %}{% endfor %}",
        too_large("the map filter"),
    ),
    ("{{ ('x' * 1000000) | map('center', 1000) | list | length }}", too_large("the list filter")),
    ("{{ ('\"' * 100000) | tojson | tojson | tojson | tojson }}", too_large("the tojson filter")),
    ("{{ ('x' * 1000000) | list | string }}", too_large("the list filter")),
    # Long texts from the event, to work that runs in Python or splits them at once.
    (
        "{{ data.big | title }}",
        "template for body: the title filter takes at most 100000 characters; give it a "
        "shorter text",
    ),
    (
        "{{ ('<a>' * 40000) | striptags }}",
        "template for body: the striptags filter takes at most 100000 characters; give it a "
        "shorter text",
    ),
    (
        "{{ data.big.split('a') | length }}",
        f"template for body: split() takes at most {LIMIT} characters "
        "(ROUTER_TEMPLATE_MAX_BYTES); give it less or raise the limit",
    ),
    (
        "{{ 1.5 | round(1000000000, 'floor') }}",
        "template for body: the round filter rounds to at most 100 digits; use a smaller precision",
    ),
    # Time: loops check the deadline on every iteration.
    (
        "{% for a in data['items'] %}{% for b in data['items'] %}{% endfor %}{% endfor %}",
        TOO_SLOW,
    ),
    (NESTED_LOOPS, TOO_SLOW),
    (
        "{% for a in data['items'] %}{% for b in data['items'] | map('string') %}"
        "{{ b if a < 0 }}{% endfor %}{% endfor %}",
        TOO_SLOW,
    ),
    (
        "{{ ('x' * 200000) | sort | length }}",
        "template for body: the sort filter takes at most 100000 items; give it fewer",
    ),
    # Output: the value itself, and all the text written in blocks.
    ("{% for c in 'x' * 2000 %}{{ 'y' * 1000 }}{% endfor %}", OUTPUT_TOO_LARGE),
    ("{% set x %}{% for c in 'x' * 100000 %}{{ 'y' * 1000000 }}{% endfor %}{% endset %}", BUILT),
    (MANY_SETS, BUILT),
    ("{% for c in 'x' * 100000 %}{{ ('y' * 1000000) | upper | length }}{% endfor %}", BUILT),
    # Methods that could build anything are not reachable.
    (
        "{{ (1).to_bytes(1000000000, 'big') }}",
        "template for body: access to attribute 'to_bytes' of 'int' object is unsafe.",
    ),
    (
        "{{ {}.fromkeys('x' * 1000000, data.text) }}",
        "template for body: access to attribute 'fromkeys' of 'dict' object is unsafe.",
    ),
    (
        "{{ [[0] * 1000] * 1000 | sum(start=[]) }}",
        "template for body: the sum filter adds numbers only",
    ),
    # And what never reaches rendering at all.
    (
        "{% macro m(n) %}{{ m(n) }}{{ m(n) }}{% endmacro %}{{ m(1) }}",
        "macro and call tags are not available in templates",
    ),
    (
        "{% for x in data['items'] recursive %}{{ loop(data['items']) }}{% endfor %}",
        "recursive loops are not available in templates",
    ),
]


@pytest.mark.parametrize(("source", "message"), ATTACKS)
def test_an_attack_is_refused_quickly_with_little_memory(
    source: str, message: str, harmless_peak: int
) -> None:
    outcome, peak = attack(source)
    assert outcome.get("error") == message
    assert outcome["seconds"] < TIMEOUT + SLACK
    assert peak - harmless_peak < MEMORY_GROWTH, f"peak {peak} KiB, harmless {harmless_peak}"


def rules(tmp_path: Path, body: str) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "attack.toml").write_text(
        f"""
[[rule]]
name = "attack"
[[rule.action]]
type = "http"
url = "http://127.0.0.1:9/x"
body = '''{body}'''
""",
        encoding="utf-8",
    )
    return directory


def router_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return {**env, **settings}


def test_router_test_reports_a_runaway_template_and_exits_1(tmp_path: Path) -> None:
    directory = rules(tmp_path, NESTED_LOOPS)
    event = tmp_path / "event.json"
    data = {"items": list(range(10000)), "big": "a" * 1000000}
    event.write_text(json.dumps({"id": "e1", "data": data}))
    done, seconds, _ = router_command(
        "test", str(directory), str(event), env=router_env(ROUTER_TEMPLATE_TIMEOUT="0.5")
    )
    assert done.returncode == 1, done.stderr
    assert (
        "-> attack action 0: http: ERROR template for body: rendering took longer than 0.5 s "
        "(ROUTER_TEMPLATE_TIMEOUT); simplify the template or raise the limit"
    ) in done.stdout
    assert "0 actions rendered, 1 could not be rendered; nothing was sent" in done.stdout
    assert seconds < 10  # interpreter start, the rules, and the 0.5 s limit


@pytest.mark.parametrize(
    "body",
    [
        "{{ 'x' | center(300000000) }}",
        "{{ '%300000000s' % 'x' }}",
        "{{ ('x' | center(300000000)) | length }}",
    ],
)
def test_router_check_evaluates_no_template(tmp_path: Path, body: str) -> None:
    # Jinja would fold these constant expressions while compiling: 300 MB each, in `check`.
    (tmp_path / "harmless").mkdir()
    harmless_rules = rules(tmp_path / "harmless", "{{ data }}")
    _, _, harmless = router_command("check", str(harmless_rules), env=router_env())
    done, seconds, peak = router_command("check", str(rules(tmp_path, body)), env=router_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert peak - harmless < MEMORY_GROWTH
    assert seconds < 10


@pytest.mark.parametrize(
    "header", ['secrets["TO" ~ "K"]', 'secrets["TO" "K"]', 'secrets[("TOK")]', "secrets[rule.name]"]
)
def test_router_check_refuses_a_secret_not_named_by_one_literal(
    tmp_path: Path, header: str
) -> None:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "r.toml").write_text(
        '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "http://127.0.0.1:9/x"\n'
        f"headers = {{ Authorization = '{{{{ {header} }}}}' }}\n",
        encoding="utf-8",
    )
    done, _, _ = router_command("check", str(directory), env=router_env(ROUTER_SECRET_TOK="t0ken"))
    assert done.returncode == 1
    assert (
        "r.toml:6: rule 'r': action[0].headers.Authorization: template: a secret must be named "
        'literally: secrets.NAME or secrets["NAME"]'
    ) in done.stdout
    assert "t0ken" not in done.stdout + done.stderr


def test_serve_keeps_answering_while_it_renders_the_worst_template(tmp_path: Path) -> None:
    with HttpSink() as sink:
        directory = tmp_path / "rules"
        directory.mkdir()
        (directory / "rules.toml").write_text(
            f"""
[[rule]]
name = "attack"
[rule.match]
tableId = "666"
[[rule.action]]
type = "http"
url = "{sink.url("/attack")}"
body = '''{NESTED_LOOPS}'''

[[rule]]
name = "forward"
[rule.match]
tableId = "1"
[[rule.action]]
type = "http"
url = "{sink.url("/forward")}"
""",
            encoding="utf-8",
        )
        router = RouterProcess(tmp_path, directory).start()
        try:
            items = list(range(10000))
            for n in range(3):  # three seconds of rendering at the 1 s limit
                data = {"items": items, "big": "a" * 1000000}
                evil = {"id": f"evil-{n}", "tableId": "666", "data": data}
                assert router.push(evil).status_code == 202
            health: list[float] = []
            pushes: list[float] = []
            with httpx.Client(timeout=10) as client:
                started = time.monotonic()
                while time.monotonic() - started < 2.5:  # 50 rounds at most
                    before = time.monotonic()
                    assert client.get(f"{router.base}/healthz").status_code == 200
                    health.append(time.monotonic() - before)
                    before = time.monotonic()
                    response = client.post(
                        f"{router.base}/webhooks/actito",
                        json={"id": f"ok-{len(pushes)}", "tableId": "1", "data": {"n": 1}},
                        headers={"X-Authorization": router.secret or ""},
                    )
                    assert response.status_code == 202
                    pushes.append(time.monotonic() - before)
                    time.sleep(0.05)  # pace the probes; not waiting for any work
            # Each render holds the render thread for a whole second; none held the loop.
            assert max(health) < 0.25, health
            assert max(pushes) < 0.5, pushes
            sink.wait_for(len(pushes), timeout=20)  # the normal pushes were delivered too

            def dead() -> list[dict[str, Any]] | None:
                listed = router.cli("deliveries", "list", "--status", "dead", "--format", "json")
                jobs: list[dict[str, Any]] = json.loads(listed.stdout)
                return jobs if len(jobs) == 3 else None

            jobs = poll(dead, timeout=20)
            reason = (
                "cannot render: template for body: rendering took longer than 1 s "
                "(ROUTER_TEMPLATE_TIMEOUT); simplify the template or raise the limit"
            )
            assert {job["rule"] for job in jobs} == {"attack"}
            assert {job["last_error"] for job in jobs} == {reason}
            assert {job["attempts"] for job in jobs} == {1}  # dead at once: never retried
            shown = router.cli("deliveries", "show", jobs[0]["id"])
            assert f"error     {reason}" in shown.stdout
            assert not [r for r in sink.requests if r.path == "/attack"]
        finally:
            router.stop()
