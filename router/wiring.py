"""The wiring of a process: `serve` (intake, plus delivery unless --no-worker) and `worker`
(delivery only). Builds the parts from the settings, runs them under uvicorn, and stops them
gracefully on SIGTERM. Anything that keeps a process from starting is a StartupError.

Stopping is honoured from the first instant. Until uvicorn takes the signals over, SIGTERM and
SIGINT interrupt the start (loading rules, waiting for the database or for another replica's
migration) and the process exits 0 without serving; while the server starts, they cancel the
store's opening. Once serving, a signal starts both drains at once: uvicorn finishes the
requests in flight and the worker stops claiming and finishes its deliveries, each within
ROUTER_DRAIN_TIMEOUT, so a container's stop timeout above that never cuts a delivery short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from router.actions.registry import build_deliverers, enrichments_of
from router.alerts import Alerts
from router.app import (
    ErrorBoundary,
    IntakeConfig,
    PortSplit,
    ReloadStatus,
    create_app,
    create_worker_app,
)
from router.circuit import CircuitPolicy, Transition, log_and_count
from router.connections import ConnectionGuard, ConnectionLimits, connection_limits
from router.console.app import PREFIXES as CONSOLE_PREFIXES
from router.console.app import console_routes
from router.engine import Engine
from router.exceptions import StartupError, StoreUnavailable
from router.matching import RuleSet
from router.metrics import Metrics
from router.reload import Reloader
from router.retry import RetryPolicy
from router.rulefiles.loader import RuleSetInvalid, load_rules
from router.settings import Settings, secret_values
from router.store import open_store
from router.store.base import Store
from router.store.rollups import ROLL_EVERY
from router.template_limits import RenderLimits
from router.worker import Worker, WorkerLimits

log = logging.getLogger("router.wiring")

PURGE_EVERY = 3600.0  # seconds between retention purges (a quarter of a shorter retention)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _Interrupted(BaseException):
    """A stop signal arrived before the process served: not an error, the start just ends.
    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it."""


@contextlib.contextmanager
def _signals_interrupt_the_start() -> Iterator[None]:
    """While the process starts, SIGTERM/SIGINT raise _Interrupted wherever it is (uvicorn
    installs its own handlers while it runs, and gives these back when it returns)."""

    def interrupt(sig: int, frame: FrameType | None) -> None:
        raise _Interrupted(sig)

    previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    except _Interrupted as exc:
        log.info("stopped by signal %s before serving", signal.Signals(exc.args[0]).name)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[None]) -> bool:
    """Await `work` unless `stop` is set first, which cancels it: whether `work` finished.
    Its own errors propagate."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


def load_startup_rules(settings: Settings) -> RuleSet:
    """Rules for a starting process: any error (unset secrets included) refuses the start, and
    so do rules that call ACTITO's API (enrich, the actito action) without its settings: their
    jobs could only retry until they expire."""
    try:
        ruleset = load_rules(
            settings.rules_dir, secrets=secret_values().keys(), unset_secrets="error"
        )
    except RuleSetInvalid as exc:
        lines = "\n".join(str(d) for d in exc.diagnostics)
        raise StartupError(f"the rules in {settings.rules_dir} are invalid:\n{lines}") from exc
    calling = sorted(
        rule.name
        for rule in ruleset.enabled
        for action in rule.actions
        if action.type == "actito" or enrichments_of(action)
    )
    missing = [
        name
        for name, value in (
            ("ROUTER_ACTITO_API_KEY", settings.actito_api_key),
            ("ROUTER_ACTITO_ENTITY", settings.actito_entity),
        )
        if not value
    ]
    if calling and missing:
        raise StartupError(
            f"rule(s) {', '.join(dict.fromkeys(calling))} call ACTITO's API, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; set "
            "them (docs/actito.md) or disable those rules"
        )
    return ruleset


def check_intake_security(settings: Settings) -> None:
    if settings.webhook_secrets:
        return
    if not settings.loopback_only:
        raise StartupError(
            f"no webhook secret is set and the intake would listen on {settings.host}; set "
            "ROUTER_WEBHOOK_SECRETS (and the same value in the ACTITO subscription's "
            f"{settings.webhook_secret_header} header), or listen on 127.0.0.1 only"
        )
    log.warning(
        "!!! INTAKE IS UNAUTHENTICATED: no ROUTER_WEBHOOK_SECRETS set. Anyone who can reach "
        "%s:%d can push events. Fine on loopback for trying it out; set a secret before "
        "exposing the router. !!!",
        settings.host,
        settings.port,
    )


def preflight_store(settings: Settings, *, migrate: bool) -> None:
    """Open the store once before serving, so a missing database or an old schema stops the
    start with one clear sentence (the server then opens it again in its own event loop)."""

    async def check() -> None:
        store = open_store(settings.store_url)
        await store.open(migrate=migrate)
        await store.close()

    try:
        asyncio.run(check())
    except (StoreUnavailable, ValueError) as exc:
        raise StartupError(f"cannot open the store: {exc}") from exc


async def declare_destinations(engine: Engine) -> None:
    """Write the serving rules' [[destination]] limits to the store, where every worker of the
    deployment reads them. A store that cannot take them now keeps the last ones declared."""
    try:
        await engine.declare_destinations()
    except StoreUnavailable as exc:
        log.warning("cannot declare the destinations' limits in the store now: %s", exc)


def build_worker(
    settings: Settings, store: Store, metrics: Metrics, alerts: Alerts | None = None
) -> Worker:
    """The worker; its circuit transitions are logged and counted, and reach `alerts`."""
    logged = log_and_count(metrics)

    def on_transition(change: Transition) -> None:
        logged(change)
        if alerts is not None:
            alerts.circuit_changed(change)

    return Worker(
        store,
        build_deliverers(settings),
        RetryPolicy.from_settings(settings),
        secrets=secret_values(),
        limits=WorkerLimits(
            concurrency=settings.concurrency,
            per_host=settings.per_host_concurrency,
            lease=settings.lease_seconds,
            drain_grace=settings.drain_timeout,
        ),
        render_limits=RenderLimits.from_settings(settings),
        metrics=metrics,
        circuit=CircuitPolicy.from_settings(settings),
        on_transition=on_transition,
    )


def build_alerts(settings: Settings, store: Store, engine: Engine | None) -> Alerts:
    """The alerts of the serving rules (they follow reloads), with deliverers of their own.
    Without an engine (`router worker`), none are checked: only the signals of its circuits
    are written to the store, for the alerts of `router serve` to count."""
    if engine is None:
        return Alerts(store, {}, alerts=tuple, secrets={}, interval=settings.alert_interval)
    return Alerts(
        store,
        build_deliverers(settings),
        alerts=lambda: engine.ruleset.alerts,
        secrets=secret_values(),
        console_url=settings.console_url,
        interval=settings.alert_interval,
        render_limits=RenderLimits.from_settings(settings),
    )


async def run_worker_until(worker: Worker, stop: asyncio.Event) -> None:
    for deliverer in worker.deliverers.values():
        await deliverer.start()
    try:
        await worker.run(stop)
    finally:
        for deliverer in worker.deliverers.values():
            with contextlib.suppress(Exception):
                await deliverer.close()


async def purge_loop(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.time()
        try:
            removed = await store.purge(
                before=now - settings.retention, dedupe_before=now - settings.dedupe_window
            )
            if removed:
                log.info("purged %d delivered job(s) older than the retention", removed)
        except StoreUnavailable as exc:
            log.warning("retention purge skipped: %s", exc)
        with contextlib.suppress(TimeoutError):
            # A retention shorter than the period would let the store hold several of it.
            await asyncio.wait_for(stop.wait(), min(PURGE_EVERY, settings.retention / 4))


async def roll_up_loop(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """Count each ended hour's settled jobs once (router.store.rollups), so that the console's
    day counters read at most 24 counts per group instead of the day's jobs."""
    while not stop.is_set():
        now = time.time()
        try:
            await store.roll_up(now=now, since=now - settings.retention)
        except StoreUnavailable as exc:
            log.warning("counting the hours' jobs skipped: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), ROLL_EVERY)


def serve(settings: Settings, *, worker: bool = True, migrate: bool = True) -> None:
    """Run the intake (and delivery workers) until SIGTERM/SIGINT."""
    with _signals_interrupt_the_start():
        _serve(settings, worker=worker, migrate=migrate)


def _serve(settings: Settings, *, worker: bool, migrate: bool) -> None:
    check_intake_security(settings)
    if settings.ops_port and settings.ops_port == settings.port:
        raise StartupError(
            f"ROUTER_OPS_PORT and ROUTER_PORT are both {settings.port}; give the operations "
            "port another number, or set ROUTER_OPS_PORT=0 to serve everything on one port"
        )
    ruleset = load_startup_rules(settings)
    preflight_store(settings, migrate=migrate)
    metrics = Metrics()
    status = ReloadStatus(version=ruleset.version, at=time.time())
    metrics.last_reload_ok.set(1)
    store = open_store(settings.store_url)  # opened by the lifespan, in the server's loop
    engine = Engine(store, ruleset, dedupe_window=settings.dedupe_window, metrics=metrics)
    server: _Server

    def fail(name: str) -> None:
        log.error("the %s stopped; shutting the server down so it can be restarted", name)
        server.should_exit = True

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = server.exit_event()
        # The preflight migrated: opening again only checks the schema, and a signal cancels it.
        if not await _unless_stopped(stop, store.open(migrate=False)):
            log.info("stopped by a signal before serving")
            yield  # uvicorn sees the signal and stops without serving
            return
        await declare_destinations(engine)
        tasks: list[asyncio.Task[None]] = []
        alerts = build_alerts(settings, store, engine)
        tasks.append(asyncio.create_task(_guard(alerts.run(stop), "alerts", fail)))
        if settings.reload:
            reloader = Reloader(
                settings.rules_dir,
                engine,
                status,
                secrets=lambda: secret_values().keys(),
                on_refused=lambda detail: alerts.signal("reload_refused", None, detail),
            )
            tasks.append(asyncio.create_task(_guard(reloader.watch(stop), "rule watcher", fail)))
        if worker:
            tasks.append(
                asyncio.create_task(
                    _guard(
                        run_worker_until(build_worker(settings, store, metrics, alerts), stop),
                        "worker",
                        fail,
                    )
                )
            )
        tasks.append(asyncio.create_task(_guard(purge_loop(store, settings, stop), "purge", fail)))
        tasks.append(
            asyncio.create_task(_guard(roll_up_loop(store, settings, stop), "hour counts", fail))
        )
        log.info(
            "serving %d rule(s) on http://%s:%d/webhooks/actito (store %s, worker %s%s)",
            len(ruleset.enabled),
            settings.host,
            settings.port,
            settings.store_url.split("://", 1)[0],
            "on" if worker else "off",
            f", health and metrics on port {settings.ops_port}" if settings.ops_port else "",
            extra={"version": ruleset.version},
        )
        try:
            yield
        finally:
            log.info("shutting down: finishing deliveries in flight")
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await store.close()
            log.info("stopped")

    config = IntakeConfig(
        secrets=tuple(s.get_secret_value().encode() for s in settings.webhook_secrets),
        secret_header=settings.webhook_secret_header,
        max_body_bytes=settings.max_body_bytes,
        max_records=settings.max_records,
    )
    console = console_routes(
        settings, store, lambda: engine.ruleset, lambda: dataclasses.asdict(status)
    )
    app: ASGIApp = create_app(engine, config, status, lifespan=lifespan, extra=console)
    ports = [settings.port]
    if settings.ops_port:
        app = PortSplit(app, settings.ops_port, CONSOLE_PREFIXES if console else ())
        ports.append(settings.ops_port)
    server = build_server(
        app,
        settings.host,
        settings.port,
        connection_limits(settings, delivering=worker),
        on_refusal=_count_refusals(metrics),
        drain_timeout=settings.drain_timeout,
    )
    if settings.ops_port:
        _run(server, [_listen(settings.host, port) for port in ports])
    else:
        _run(server)


class _Server(uvicorn.Server):
    """uvicorn's server, told of a stop signal at once (`exit_event`), where uvicorn itself only
    notices it at its next tick, once started.

    uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, so the process dies by the
    signal (exit status 143). After a complete drain the router exits 0 instead."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def exit_event(self) -> asyncio.Event:
        """An event of the running loop, set as soon as the server is told to exit (a signal;
        already set if one came before)."""
        if self._exit is None:
            self._exit = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            if self.should_exit:
                self._exit.set()
        return self._exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
        if self._loop is not None and self._exit is not None:
            # A signal handler runs between two steps of the loop: wake the loop up.
            self._loop.call_soon_threadsafe(self._exit.set)


def build_server(
    app: ASGIApp,
    host: str,
    port: int,
    limits: ConnectionLimits,
    *,
    http: type[asyncio.Protocol] = AutoHTTPProtocol,
    on_refusal: Callable[[str], None] | None = None,
    drain_timeout: float = 30.0,
) -> _Server:
    """A uvicorn server for `app` whose connections are bounded by `limits` (see
    router.connections), with `http` (uvicorn's h11 or httptools protocol) as the parser, and
    whose application errors never reach uvicorn (see ErrorBoundary). On exit, requests in
    flight get `drain_timeout` seconds to finish."""
    guard = ConnectionGuard(limits, on_refusal=on_refusal)
    return _Server(
        uvicorn.Config(
            ErrorBoundary(app),
            host=host,
            port=port,
            http=guard.protocol_class(http),
            ws="none",  # no WebSockets: an Upgrade request is answered as plain HTTP
            # The guard closes idle connections on time; uvicorn's own timer (whole seconds)
            # is only a backstop.
            timeout_keep_alive=math.ceil(limits.keepalive_timeout),
            # h11 must not refuse a head the guard accepts (httptools has no such limit).
            h11_max_incomplete_event_size=limits.max_header_bytes,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(drain_timeout),
            server_header=False,
        )
    )


def _count_refusals(metrics: Metrics) -> Callable[[str], None]:
    return lambda reason: metrics.requests_rejected.labels(reason=reason).inc()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would open it, or a StartupError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); free the port or choose "
            "another"
        ) from exc


def _run(server: _Server, sockets: list[socket.socket] | None = None) -> None:
    try:
        server.run(sockets=sockets)
    finally:
        for sock in sockets or ():
            sock.close()
    if not server.started and not server.should_exit:
        raise StartupError("the server did not start; see the log above")


def run_worker(settings: Settings, *, migrate: bool = True) -> None:
    """Deliver jobs until SIGTERM/SIGINT (no intake). /healthz, /readyz and /metrics are served
    on ROUTER_WORKER_PORT unless it is 0."""
    with _signals_interrupt_the_start():
        _run_worker(settings, migrate=migrate)


def _run_worker(settings: Settings, *, migrate: bool) -> None:
    preflight_store(settings, migrate=migrate)
    metrics = Metrics()
    store = open_store(settings.store_url)

    async def work(stop: asyncio.Event, fail: Callable[[str], None]) -> None:
        log.info("worker started (store %s)", settings.store_url.split("://", 1)[0])
        try:
            alerts = build_alerts(settings, store, None)
            worker = build_worker(settings, store, metrics, alerts)
            await asyncio.gather(
                _guard(run_worker_until(worker, stop), "worker", fail),
                _guard(alerts.run(stop), "alert signals", fail),
                _guard(purge_loop(store, settings, stop), "purge", fail),
                _guard(roll_up_loop(store, settings, stop), "hour counts", fail),
            )
        finally:
            await store.close()
            log.info("worker stopped")

    if settings.worker_port == 0:

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in STOP_SIGNALS:
                loop.add_signal_handler(sig, stop.set)
            if await _unless_stopped(stop, store.open(migrate=False)):
                await work(stop, lambda name: stop.set())
            else:
                log.info("stopped by a signal before delivering")

        asyncio.run(main())
        return

    server: _Server

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = server.exit_event()

        def fail(name: str) -> None:
            log.error("the %s stopped; shutting down so it can be restarted", name)
            server.should_exit = True

        if not await _unless_stopped(stop, store.open(migrate=False)):
            log.info("stopped by a signal before delivering")
            yield
            return
        task = asyncio.create_task(work(stop, fail))
        try:
            yield
        finally:
            stop.set()
            await task

    server = build_server(
        create_worker_app(
            store, metrics, lifespan=lifespan, extra=_worker_console(settings, store)
        ),
        settings.host,
        settings.worker_port,
        connection_limits(settings, delivering=True),
        on_refusal=_count_refusals(metrics),
        drain_timeout=settings.drain_timeout,
    )
    _run(server)


def _worker_console(settings: Settings, store: Store) -> list[BaseRoute]:
    """The console of a `router worker`: its rules are read once, at start, for the rules page,
    explain and try; a worker whose rules do not load still shows records and jobs."""
    if not settings.console_tokens and not settings.console_viewer_tokens:
        return []
    loaded: dict[str, Any] = {"at": time.time()}
    ruleset: RuleSet | None = None
    try:
        ruleset = load_rules(settings.rules_dir, secrets=secret_values().keys())
    except (RuleSetInvalid, OSError) as exc:
        loaded.update(ok=False, errors=[str(exc)])
        log.warning("the console of this worker shows no rules: %s", exc)
    else:
        loaded.update(ok=True, version=ruleset.version, errors=[])
    return console_routes(settings, store, lambda: ruleset, lambda: loaded)


async def _guard(work: Awaitable[None], name: str, on_failure: Callable[[str], None]) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("the %s stopped on an error", name)
        on_failure(name)
