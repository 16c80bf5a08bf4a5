"""Destinations as data: `[[destination]]` tables as `router check` reads them, the job's
destination from its URL, and the limits every claimer of one store shares (concurrency held
at a real sink by two workers; rate slots spaced across two store instances)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.actions.registry import destination_of
from router.destinations import DestinationProblem, parse_rate, pause_target
from router.rulefiles.loader import load
from router.store import open_store
from tests.controls.support import (
    BACKENDS,
    FlakySink,
    delivered,
    deployment,
    event,
    rules,
    store_url,
    until,
)
from tests.sinks import Reply

DESTINATIONS = """
[[destination]]
url = "https://crm.example.com/"
rate = "10/s"
concurrency = 4

[[destination]]
url = "https://crm.example.com/bulk/"
rate = "100/min"

[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "https://CRM.example.com/bulk/{{ data.n }}"
[[rule.action]]
type = "http"
url = "https://crm.example.com/contacts/{{ data.n }}"
[[rule.action]]
type = "http"
url = "https://other.example.com/{{ data.n }}"
"""


def test_declared_destinations_and_the_longest_prefix_wins(tmp_path: Path) -> None:
    ruleset = rules(tmp_path, DESTINATIONS)
    declared = ruleset.destinations
    assert [(d.key, d.rate, d.concurrency) for d in declared] == [
        ("crm.example.com:443/", 10.0, 4),
        ("crm.example.com:443/bulk/", 100 / 60, None),
    ]
    bulk, contacts, other = ruleset.rules[0].actions
    assert destination_of(bulk, declared) == "crm.example.com:443/bulk/"
    assert destination_of(contacts, declared) == "crm.example.com:443/"
    assert destination_of(other, declared) == "other.example.com:443"  # undeclared: its host
    assert parse_rate("5000/h") == pytest.approx(5000 / 3600)
    assert pause_target("HTTPS://crm.example.com/bulk/") == "crm.example.com:443/bulk/"
    assert pause_target("crm.example.com:443") == "crm.example.com:443"
    # A declared destination's key, as the console and `pauses` list it, names itself.
    assert pause_target("CRM.example.com:443/Bulk/") == "crm.example.com:443/Bulk/"
    for bad in ("smtp/bulk", "crm.example.com:443/a?b=1", "crm.example.com/bulk/"):
        with pytest.raises(DestinationProblem, match="neither a destination URL"):
            pause_target(bad)


@settings(database=None)
@given(
    host=st.sampled_from(
        ["crm.example.com", "CRM.Example.com", "127.0.0.1", "[::1]", "xn--bcher-kva.example"]
    ),
    port=st.sampled_from(["", ":8443", ":80"]),
    path=st.text(max_size=30).map(lambda text: "/" + text),
)
def test_every_key_a_url_gives_names_itself_again(host: str, port: str, path: str) -> None:
    """A pause lists its key; the console's Resume (and `resume --destination KEY`) names it."""
    try:
        key = pause_target(f"https://{host}{port}{path}")
    except DestinationProblem:
        return  # no destination URL: nothing is listed
    assert pause_target(key) == key


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        ('url = "ftp://crm.example.com/"\nrate = "1/s"', 2, "is not an http(s) URL prefix"),
        ('url = "https://crm.example.com/"\nrate = "ten a second"', 3, "is not a rate"),
        ('url = "https://crm.example.com/"\nrate = "0/s"', 3, "must be above 0"),
        ('url = "https://crm.example.com/"\nconcurrency = 0', 3, "out of range"),
        ('url = "https://crm.example.com/?a=1"', 2, "scheme, host, port and path only"),
        ('url = "https://crm.example.com/"\nburst = 3', 3, "unknown key"),
        ('rate = "1/s"', 1, "url: is missing"),
    ],
)
def test_router_check_points_at_a_bad_destination(
    tmp_path: Path, table: str, line: int, message: str
) -> None:
    (tmp_path / "r.toml").write_text(
        f'[[destination]]\n{table}\n\n[[rule]]\nname = "x"\n[[rule.action]]\ntype = "log"\n'
        'message = "hi"\n'
    )
    result = load(tmp_path)
    assert result.ruleset is None
    (diagnostic,) = [d for d in result.diagnostics if d.severity == "error"]
    assert (diagnostic.file, diagnostic.line) == (str(tmp_path / "r.toml"), line)
    assert message in str(diagnostic)


def test_a_destination_is_declared_once(tmp_path: Path) -> None:
    table = '[[destination]]\nurl = "https://crm.example.com"\n'
    (tmp_path / "a.toml").write_text(
        table + '[[rule]]\nname = "x"\n[[rule.action]]\ntype = "log"\nmessage = "m"\n'
    )
    (tmp_path / "b.toml").write_text(table.replace("crm.example.com", "CRM.example.com:443/"))
    (diagnostic,) = load(tmp_path).diagnostics
    assert diagnostic.file.endswith("b.toml") and "already declared at" in diagnostic.message
    assert "a.toml:1" in diagnostic.message


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrency_holds_across_two_workers(backend: str, tmp_path: Path) -> None:
    with FlakySink(default=Reply(200, delay=0.05)) as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path,
            f"""
[[destination]]
url = "{sink.url("/")}"
concurrency = 2

[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{sink.url("/")}{{{{ data.n }}}}"
""",
        )

        async def scenario() -> None:
            async with deployment(url, ruleset, workers=2) as d:
                await d.push([event(n) for n in range(30)])
                await until(lambda: len(delivered(sink)) >= 30, what="every job delivered")

        asyncio.run(scenario())
        assert sink.most_in_flight == 2  # two workers of 8 slots each, held to the declared 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_slots_are_shared_by_every_claimer(backend: str, tmp_path: Path) -> None:
    with store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path,
            """
[[destination]]
url = "https://crm.example.com/"
rate = "10/s"

[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "https://crm.example.com/{{ data.n }}"
""",
        )

        async def scenario() -> list[float]:
            async with deployment(url, ruleset, running=False) as d:
                await d.push([event(n) for n in range(40)])
                other = open_store(url)
                await other.open()
                try:
                    now = time.time() + 1  # every job due
                    first = await d.stores[1].claim(limit=100, lease=30, now=now)
                    second = await other.claim(limit=100, lease=30, now=now)
                    later = await other.claim(limit=100, lease=30, now=now + 0.35)
                finally:
                    await other.close()
                assert second == []  # the first claim took every slot of the next second
                assert len(first) == 11 and len(later) == 3  # slots 1.1, 1.2, 1.3 s ahead
                return [job.not_before or 0 for job in [*first, *later]]

        times = asyncio.run(scenario())
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps == [pytest.approx(0.1, abs=1e-4)] * len(gaps)  # one slot per 1/rate
