"""Alerts end to end: jobs killed by a real worker at a real HTTP sink, alerts read from real
rule files, notifications sent to a real SMTP server (aiosmtpd) and HTTP sink, on SQLite and
PostgreSQL: once per window, recovered, one replica of two, signals from the reload path and
from any component, a notification that failed tried again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

from router.actions.registry import build_deliverers
from router.alerts import Alerts
from router.app import ReloadStatus
from router.circuit import CircuitPolicy, Outcomes
from router.engine import Engine
from router.matching import RuleSet
from router.reload import Reloader
from router.rulefiles.loader import load_rules
from router.settings import Settings
from router.store import open_store
from router.store.base import Store
from tests.sinks import HttpSink, Reply, SmtpSink
from tests.test_worker import action_for, backlog, make_worker, run_worker

DEADLINE = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rules(tmp_path: Path, text: str, name: str = "rules") -> RuleSet:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    (directory / "a.toml").write_text(
        '[[rule]]\nname = "crm"\n[[rule.action]]\ntype = "log"\nmessage = "x"\n\n' + text
    )
    return load_rules(directory)


def alerts_for(
    store: Store,
    ruleset: RuleSet,
    *,
    smtp: SmtpSink | None = None,
    clock: Clock | None = None,
    console: str | None = None,
) -> Alerts:
    settings = Settings(
        smtp_host="127.0.0.1", smtp_port=smtp.port if smtp else 25, email_from="router@example.com"
    )
    return Alerts(
        store,
        build_deliverers(settings),
        alerts=lambda: ruleset.alerts,
        secrets={},
        console_url=console,
        clock=clock or time.time,
    )


async def started(alerts: Alerts) -> None:
    for deliverer in alerts.deliverers.values():
        await deliverer.start()


async def closed(alerts: Alerts) -> None:
    for deliverer in alerts.deliverers.values():
        await deliverer.close()


async def kill(store: Store, tmp_path: Path, sink: HttpSink, rule: str, count: int) -> None:
    """`count` jobs of `rule` made dead by the worker: the sink answers 400."""
    directory = tmp_path / f"rules-{rule}"
    if directory.exists():
        action = load_rules(directory).rules[0].actions[0]
    else:
        action = action_for(tmp_path, rule, f'type = "http"\nurl = "{sink.url("/" + rule)}"')
    await backlog(store, action, rule, count)  # type: ignore[arg-type]
    worker = make_worker(store, concurrency=8, per_host=4)  # type: ignore[arg-type]
    await run_worker(worker, asyncio.Event(), drain=True)


DEAD_ALERT = """
[[alert]]
name = "crm deliveries dying"
when = "dead"
rule = "crm"
threshold = 3
window = "1m"
[alert.action]
type = "email"
to = "ops@example.com"
subject = "[{{ alert.state }}] {{ alert.count }} dead in {{ alert.window }}: {{ alert.rule }}"
text = '''
{{ alert.name }} ({{ alert.count }} >= {{ alert.threshold }})
{% for e in alert.errors %}- {{ e }}
{% endfor %}{{ alert.link }}
'''
"""


def test_a_dead_alert_fires_once_per_window_and_says_when_it_recovers(
    tmp_path: Path, store_url: str
) -> None:
    ruleset = rules(tmp_path, DEAD_ALERT)
    clock = Clock()
    with SmtpSink() as smtp, HttpSink(default=Reply(400)) as crm:

        async def scenario() -> None:
            store = open_store(store_url)
            await store.open()
            alerts = alerts_for(
                store, ruleset, smtp=smtp, clock=clock, console="https://c.example/"
            )
            await started(alerts)
            try:
                await kill(store, tmp_path, crm, "crm", 2)
                await alerts.check()
                assert smtp.messages == []  # 2 of 3: not yet
                await kill(store, tmp_path, crm, "crm", 2)
                await alerts.check()
                await alerts.check()  # within the window: nothing more
                assert len(smtp.messages) == 1
                clock.now = time.time() + 61  # every death is out of the window: recovered
                await alerts.check()
                await alerts.check()
            finally:
                await closed(alerts)
                await store.close()

        asyncio.run(scenario())
        messages = [m.message for m in smtp.messages]
    assert [m["Subject"] for m in messages] == [
        "[firing] 4 dead in 1m: crm",
        "[recovered] 0 dead in 1m: crm",
    ]
    body = messages[0].get_content()
    assert body.count(f"- HTTP 400 from 127.0.0.1:{crm.port}") == 3  # the first three errors
    assert "https://c.example/deliveries?status=dead&rule=crm" in body


def test_of_two_replicas_one_fires(tmp_path: Path, store_url: str) -> None:
    with HttpSink() as hook, HttpSink(default=Reply(400)) as crm:
        ruleset = rules(
            tmp_path,
            f"""
[[alert]]
when = "dead"
[alert.action]
type = "http"
url = "{hook.url("/alert")}"
body = '{{"text": {{{{ (alert.name ~ ": " ~ alert.count) | tojson }}}}}}'
""",
        )

        async def scenario() -> int:
            first, second = open_store(store_url), open_store(store_url)
            await first.open()
            await second.open()
            one, two = alerts_for(first, ruleset), alerts_for(second, ruleset)
            await started(one)
            await started(two)
            try:
                await kill(first, tmp_path, crm, "crm", 1)
                for _ in range(3):
                    await asyncio.gather(one.check(), two.check())
                return one.sent + two.sent
            finally:
                await closed(one)
                await closed(two)
                await first.close()
                await second.close()

        sent = asyncio.run(scenario())
    assert sent == 1
    assert [json.loads(r.body) for r in hook.requests] == [{"text": "dead: 1"}]


def test_a_refused_reload_is_signalled_and_alerts_at_once(tmp_path: Path) -> None:
    with HttpSink() as hook:
        text = f"""
[[alert]]
when = "reload_refused"
[alert.action]
type = "http"
url = "{hook.url("/alert")}"
body = "{{{{ alert.errors | join(' | ') }}}}"
"""
        ruleset = rules(tmp_path, text)
        directory = tmp_path / "rules"

        async def scenario() -> None:
            store = open_store(f"sqlite:///{tmp_path / 'r.db'}")
            await store.open()
            engine = Engine(store, ruleset, dedupe_window=0)
            alerts = alerts_for(store, ruleset)
            alerts.alerts = lambda: engine.ruleset.alerts
            reloader = Reloader(
                directory,
                engine,
                ReloadStatus(version=ruleset.version),
                secrets=lambda: (),
                on_refused=lambda detail: alerts.signal("reload_refused", None, detail),
            )
            stop = asyncio.Event()
            alerts.interval = 3600  # only the signal can make it check again in time
            task = asyncio.create_task(alerts.run(stop))
            try:
                await until(lambda: alerts._loop is not None)
                (directory / "a.toml").write_text(
                    (directory / "a.toml").read_text() + "\n[[rule]]\n"
                )
                assert not await asyncio.to_thread(reloader.reload)  # in a thread, as served
                await hook.wait(1)
            finally:
                stop.set()
                await task
                await store.close()

        asyncio.run(scenario())
    body = hook.requests[0].body.decode()
    assert body.startswith("2 error(s), the first: "), body
    assert f"{tmp_path / 'rules' / 'a.toml'}:15: rule[1].name: is missing" in body, body


def test_circuit_open_fires_while_a_circuit_is_open_and_recovers_when_it_closes(
    tmp_path: Path, store_url: str
) -> None:
    with HttpSink() as hook:
        text = "".join(
            f"""
[[alert]]
name = "{name}"
when = "circuit_open"
destination = "{destination}"
[alert.action]
type = "http"
url = "{hook.url("/" + name)}"
body = "{{{{ alert.state }}}} {{{{ alert.count }}}}: {{{{ alert.errors | first | default('-') }}}}"
"""
            for name, destination in (("crm", "https://crm.example.com/"), ("shop", "shop:8443"))
        )
        ruleset = rules(tmp_path, text)
        policy = CircuitPolicy(failures=2)
        key = "crm.example.com:443/api/"  # a declared destination on the alert's host

        async def scenario() -> None:
            store = open_store(store_url)
            await store.open()
            alerts = alerts_for(store, ruleset)
            await started(alerts)
            try:
                failed = {key: Outcomes(False, 2)}
                (opened,) = await store.report_outcomes(failed, policy=policy, now=time.time())
                # What the worker's on_transition calls (from any thread).
                thread = threading.Thread(target=alerts.circuit_changed, args=(opened,))
                thread.start()
                thread.join()
                await alerts.check()
                await alerts.check()  # still open: not again within the window
                answered = {key: Outcomes(True, 0)}
                (closed_,) = await store.report_outcomes(answered, policy=policy, now=time.time())
                alerts.circuit_changed(closed_)
                await alerts.check()
            finally:
                await closed(alerts)
                await store.close()

        asyncio.run(scenario())
    detail = f"circuit of {key} opened after 2 failures in a row"
    assert [(r.path, r.body.decode()[: 10 + len(detail)]) for r in hook.requests] == [
        ("/crm", f"firing 1: {detail}"),
        ("/crm", "recovered 0: -"),
    ]


def test_failing_counts_failed_attempts_of_one_destination(tmp_path: Path, store_url: str) -> None:
    with HttpSink() as hook, HttpSink(default=Reply(400)) as bad, HttpSink() as good:
        text = "".join(
            f"""
[[alert]]
name = "{name}"
when = "failing"
destination = "127.0.0.1:{sink.port}"
threshold = 2
[alert.action]
type = "http"
url = "{hook.url("/" + name)}"
body = "{{{{ alert.count }}}}"
"""
            for name, sink in (("bad", bad), ("good", good))
        )
        ruleset = rules(tmp_path, text)

        async def scenario() -> None:
            store = open_store(store_url)
            await store.open()
            alerts = alerts_for(store, ruleset)
            await started(alerts)
            try:
                await kill(store, tmp_path, bad, "bad", 2)
                await kill(store, tmp_path, good, "good", 5)  # delivered: not failing
                await alerts.check()
            finally:
                await closed(alerts)
                await store.close()

        asyncio.run(scenario())
    assert [(r.path, r.body) for r in hook.requests] == [("/bad", b"2")]


def test_a_notification_that_could_not_be_sent_is_tried_again(tmp_path: Path) -> None:
    with HttpSink() as hook, HttpSink(default=Reply(400)) as crm:
        hook.script(Reply(503))
        ruleset = rules(
            tmp_path,
            f'[[alert]]\nwhen = "dead"\n[alert.action]\ntype = "http"\nurl = "{hook.url()}"\n'
            'body = "{{ alert.state }}"\n',
        )

        async def scenario() -> int:
            store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
            await store.open()
            alerts = alerts_for(store, ruleset)
            await started(alerts)
            try:
                await kill(store, tmp_path, crm, "crm", 1)
                await alerts.check()  # 503: not sent
                await alerts.check()  # tried again
                await alerts.check()  # sent: nothing more within the window
                return alerts.sent
            finally:
                await closed(alerts)
                await store.close()

        sent = asyncio.run(scenario())
    assert sent == 1
    assert [r.body for r in hook.requests] == [b"firing", b"firing"]


async def until(check: Any) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.01)
