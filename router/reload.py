"""Hot reload: watch the rules directory, validate a changed set whole, swap it atomically.

Editors that save by rename, `git pull`, and Kubernetes ConfigMap updates (which swap a `..data`
symlink inside the mounted directory) all show up as changes in the directory. Whatever changed,
the whole set is loaded again; an invalid set is refused and the last good one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from pathlib import Path

import watchfiles

from router.app import ReloadStatus
from router.engine import Engine
from router.exceptions import StoreUnavailable
from router.rulefiles.loader import load

log = logging.getLogger("router.reload")

DEBOUNCE_MS = 300  # changes closer together than this are one reload
POLL_EVERY = 30.0  # seconds; a full check even without events (network volumes miss inotify)
PACE_EVERY = 0.0005  # seconds of loading between two turns given to the event loop


class Pacer:
    """The pace of a load beside the event loop (router.rulefiles.loader.load): every
    PACE_EVERY of work it releases the interpreter (time.sleep(0)), so a push waiting for the
    event loop waits that long, not the interpreter's 5 ms switch interval each time it needs
    it back. A reload of 1,000 new rules takes about 0.3 s of CPU; pushes meanwhile are
    answered as fast as before."""

    def __init__(self, every: float = PACE_EVERY) -> None:
        self.every = every
        self.turns = 0  # how many times it let others run
        self._next = time.perf_counter() + every

    def __call__(self) -> None:
        if time.perf_counter() >= self._next:
            time.sleep(0)
            self.turns += 1
            self._next = time.perf_counter() + self.every


class Reloader:
    def __init__(
        self,
        directory: str | Path,
        engine: Engine,
        status: ReloadStatus,
        *,
        secrets: Callable[[], Collection[str]],
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.engine = engine
        self.status = status
        self.secrets = secrets
        self.clock = clock
        self.on_refused = on_refused  # told each newly refused set's first error (alerts)

    def reload(self) -> bool:
        """Load the directory now; swap in the new set if it is valid and differs.
        Returns True if a new set now serves."""
        result = load(self.directory, secrets=self.secrets(), unset_secrets="error", pace=Pacer())
        metrics = self.engine.metrics
        if result.ruleset is None:
            errors = [str(d) for d in result.diagnostics if d.severity == "error"]
            if self.status.errors == errors and not self.status.ok:
                return False  # the same broken set again: said already
            self.status.ok = False
            self.status.at = self.clock()
            self.status.errors = errors
            metrics.reloads.labels(result="invalid").inc()
            metrics.last_reload_ok.set(0)
            log.error(
                "rule reload refused; the previous rules keep serving:\n  %s",
                "\n  ".join(errors),
                extra={"version": self.engine.ruleset.version},
            )
            if self.on_refused is not None:
                first = errors[0] if errors else "?"
                self.on_refused(f"{len(errors)} error(s), the first: {first}")
            return False
        if result.ruleset.version == self.engine.ruleset.version:
            if not self.status.ok:  # a broken edit was reverted
                self.status.ok, self.status.errors, self.status.at = True, [], self.clock()
                metrics.last_reload_ok.set(1)
            return False
        self.engine.swap(result.ruleset)
        self.status.version = result.ruleset.version
        self.status.ok, self.status.errors, self.status.at = True, [], self.clock()
        metrics.reloads.labels(result="ok").inc()
        metrics.last_reload_ok.set(1)
        for diagnostic in result.diagnostics:
            log.warning("%s", diagnostic)
        log.info(
            "rules reloaded: %d enabled",
            len(result.ruleset.enabled),
            extra={"version": result.ruleset.version},
        )
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload on every change until `stop` is set."""
        watcher = watchfiles.awatch(
            self.directory,
            stop_event=stop,
            debounce=DEBOUNCE_MS,
            rust_timeout=int(POLL_EVERY * 1000),
            yield_on_timeout=True,
            recursive=True,
            ignore_permission_denied=True,
            watch_filter=None,
        )
        async for _changes in watcher:
            try:
                if await asyncio.to_thread(self.reload):
                    await self.declare()
            except Exception:  # a reload must never take the server down
                log.exception("rule reload crashed; the previous rules keep serving")

    async def declare(self) -> None:
        """Write the new rules' [[destination]] limits to the store, for every worker."""
        try:
            await self.engine.declare_destinations()
        except StoreUnavailable as exc:
            log.warning("cannot declare the destinations' limits in the store now: %s", exc)
