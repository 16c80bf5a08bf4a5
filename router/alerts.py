"""Alerts: tell someone when deliveries are in trouble, once per window, and when it is over.

The `[[alert]]` tables of the rules (router.rulefiles.alerts) are checked every
ROUTER_ALERT_INTERVAL seconds, and at once after a signal:

- "dead" counts the jobs that died within the window, "failing" the failed attempts (retried
  or dead), of the alert's rule or destination when it names one: both are read from the store,
  so every replica sees the same counts;
- "circuit_open" counts the destinations whose circuit (router.circuit) is open now, from the
  store, so every replica sees them and the alert recovers when the circuit closes; the
  worker's circuit transitions reach `Alerts.circuit_changed`, which records an opening as a
  signal (the sentence its notification quotes) and checks the alerts at once;
- "reload_refused" counts signals: any component calls `Alerts.signal(kind, scope, detail)`
  when such a thing happens (the reload path when it refuses a rule set); the signal is written
  to the store, where every replica's alerts count it.

When the count reaches the threshold, the alert fires: its action (email, http or log) is
rendered with `alert` (what happened: the counts, the first errors, a link to the console when
ROUTER_CONSOLE_URL is set) and sent once. It fires again at most once per window while the
trouble lasts (a reminder), and says so when the count falls below the threshold (recovered).
The alert's state is in the store, moved atomically: with several replicas, one of them fires.
A notification that cannot be sent is logged, and tried again at the next check.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from router.actions.base import Deliverer
from router.actions.registry import render
from router.circuit import OPEN, Transition
from router.exceptions import DeliveryFailed, RenderError, StoreUnavailable
from router.rules import Alert
from router.sandbox import EnvSecrets
from router.store.base import AlertFacts, Store
from router.template_limits import RenderLimits

log = logging.getLogger("router.alerts")

FIRST_ERRORS = 3  # errors an alert quotes
MAX_SIGNALS = 1000  # signals kept in memory while the store cannot take them
ALERT_TIMEOUT = 30.0  # seconds one notification may take

FIRING, REMINDER, RECOVERED = "firing", "still firing", "recovered"


class Alerts:
    """Checks the alerts of the serving rules, and takes signals from any component."""

    def __init__(
        self,
        store: Store,
        deliverers: Mapping[str, Deliverer],
        *,
        alerts: Callable[[], Sequence[Alert]],
        secrets: Mapping[str, str],
        console_url: str | None = None,
        interval: float = 30.0,
        render_limits: RenderLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deliverers = deliverers
        self.alerts = alerts
        self.secrets = EnvSecrets(dict(secrets))
        self.console_url = console_url.rstrip("/") if console_url else None
        self.interval = interval
        self.render_limits = render_limits or RenderLimits()
        self.clock = clock
        self.sent = 0  # notifications sent, for tests and logs
        self._signals: collections.deque[tuple[str, str | None, str | None, float]] = (
            collections.deque(maxlen=MAX_SIGNALS)
        )
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def signal(self, kind: str, scope: str | None = None, detail: str | None = None) -> None:
        """Something alerts count happened ("circuit_open" of destination `scope`,
        "reload_refused"); `detail` is one sentence that an alert may quote, never a secret.
        Callable from any thread; returns at once (the store write happens in `run`)."""
        with self._lock:
            self._signals.append((kind, scope, detail, self.clock()))
        self._poke()

    def circuit_changed(self, change: Transition) -> None:
        """A circuit transition (the worker's `on_transition`): an opening is a signal; a
        closing only makes the alerts look again now (the open circuits are counted from the
        store), so its alert says it recovered without waiting for the next interval."""
        if change.new == OPEN:
            self.signal("circuit_open", change.destination, change.detail)
        else:
            self._poke()

    def _poke(self) -> None:
        with self._lock:
            loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just stopped
                loop.call_soon_threadsafe(wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        """Check the alerts every `interval` seconds, and after each signal, until `stop`."""
        wake = asyncio.Event()
        with self._lock:
            self._loop, self._wake = asyncio.get_running_loop(), wake
        if self._signals:
            wake.set()
        for deliverer in self.deliverers.values():
            await deliverer.start()
        try:
            while not stop.is_set():
                try:
                    await self.check()
                except StoreUnavailable as exc:
                    log.warning("cannot check the alerts: %s", exc)
                waiting = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
                await asyncio.wait(
                    waiting, timeout=self.interval, return_when=asyncio.FIRST_COMPLETED
                )
                for task in waiting:
                    task.cancel()
                await asyncio.gather(*waiting, return_exceptions=True)
                wake.clear()
        finally:
            with self._lock:
                self._loop = self._wake = None
            for deliverer in self.deliverers.values():
                with contextlib.suppress(Exception):
                    await deliverer.close()

    async def check(self) -> None:
        """Write the signals received to the store, then check every alert once."""
        await self._flush_signals()
        for alert in self.alerts():
            try:
                await self._check(alert)
            except StoreUnavailable:
                raise
            except Exception:  # one broken alert must not stop the others
                log.exception("checking an alert crashed", extra={"alert": alert.name})

    async def _flush_signals(self) -> None:
        while True:
            with self._lock:
                if not self._signals:
                    return
                kind, scope, detail, at = self._signals[0]
            await self.store.add_signal(kind=kind, scope=scope, detail=detail, at=at)
            with self._lock:
                self._signals.popleft()

    async def _check(self, alert: Alert) -> None:
        now = self.clock()
        facts = await self.store.alert_facts(
            kind=alert.when,
            since=now - alert.window,
            rule=alert.rule,
            destination=alert.destination if alert.when in ("dead", "failing") else None,
            scope=alert.destination if alert.when == "circuit_open" else None,
            errors=FIRST_ERRORS,
        )
        if facts.count >= alert.threshold:
            fired = await self.store.fire_alert(alert.name, now=now, window=alert.window)
            if fired is None:
                return  # fired within the window (here or in another replica)
            if not await self._notify(alert, FIRING if fired else REMINDER, facts, now):
                await self.store.unfire_alert(alert.name)
        elif await self.store.recover_alert(alert.name, now=now):
            await self._notify(alert, RECOVERED, facts, now)

    async def _notify(self, alert: Alert, state: str, facts: AlertFacts, now: float) -> bool:
        """Render and send the alert's action once; False when it could not be sent."""
        action = alert.action
        extra = {"alert": alert.name, "state": state, "count": facts.count}
        try:
            with self.render_limits.applied():
                rendered = render(action, self.context(alert, state, facts, now))
            rendered["rule"], rendered["event_id"] = f"alert:{alert.name}", None
            deliverer = self.deliverers[action.type]
            await deliverer.deliver(
                rendered,
                job_id=_notification_id(alert, state, now),
                timeout=action.timeout or ALERT_TIMEOUT,
            )
        except (RenderError, DeliveryFailed, ValueError) as exc:
            log.error("cannot send the alert: %s", exc, extra=extra)
            return False
        except Exception as exc:  # a bug must not stop alerting: say so, try again later
            log.exception("sending the alert crashed: %s", type(exc).__name__, extra=extra)
            return False
        self.sent += 1
        log.warning("alert %s: %s", state, alert.name, extra=extra)
        return True

    def context(self, alert: Alert, state: str, facts: AlertFacts, now: float) -> dict[str, Any]:
        """What an alert's templates see: `alert`, `secrets` and `now`."""
        since = datetime.fromtimestamp(now - alert.window, UTC)
        return {
            "alert": {
                "name": alert.name,
                "when": alert.when,
                "state": state,
                "firing": state != RECOVERED,
                "rule": alert.rule,
                "destination": alert.destination,
                "count": facts.count,
                "threshold": alert.threshold,
                "window": _duration(alert.window),
                "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "errors": list(facts.errors),
                "link": self.link(alert),
                "file": str(alert.location),
            },
            "secrets": self.secrets,
            "now": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def link(self, alert: Alert) -> str | None:
        """Where the console lists what the alert is about (None: no console configured)."""
        if self.console_url is None:
            return None
        query: dict[str, str] = {}
        if alert.when in ("dead", "failing"):
            query["status"] = "dead" if alert.when == "dead" else "pending"
            if alert.rule:
                query["rule"] = alert.rule
            if alert.destination:
                query["destination"] = alert.destination
            return f"{self.console_url}/deliveries?{urlencode(query)}"
        return self.console_url


def _notification_id(alert: Alert, state: str, now: float) -> str:
    """The notification's identity (an http action's Idempotency-Key): ASCII whatever the
    alert's name, the same for every replica that would send it at that moment."""
    digest = hashlib.sha256(f"{alert.name}\0{state}".encode()).hexdigest()[:16]
    return f"alert-{digest}-{int(now)}"


def _duration(seconds: float) -> str:
    """15m, 1h, 90s: a window as its author would write it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
