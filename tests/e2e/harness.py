"""`router serve` / `router worker` as real processes, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.sinks import free_port

SECRET = "e2e-shared-secret"
START_SECONDS = 20.0
_T = TypeVar("_T")


def poll(check: Callable[[], _T | None], *, timeout: float = 15.0, every: float = 0.05) -> _T:
    """Call `check` until it returns something other than None/False, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(every)


class RouterProcess:
    """One router process (`serve` by default) with its own port, env and log file."""

    def __init__(
        self,
        workdir: Path,
        rules_dir: Path,
        *,
        store_url: str | None = None,
        command: tuple[str, ...] = ("serve",),
        env: Mapping[str, str] | None = None,
        secret: str | None = SECRET,
        port: int | None = None,
        module: str = "router",
    ) -> None:
        self.workdir = workdir
        self.module = module  # `python -m <module>`: a test's own entry point may register types
        self.port = port or free_port()
        self.command = command
        self.log_path = workdir / f"router-{self.port}-{command[0]}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
            "ROUTER_RULES_DIR": str(rules_dir),
            "ROUTER_STORE_URL": store_url or f"sqlite:///{workdir / 'router.db'}",
            "ROUTER_HOST": "127.0.0.1",
            "ROUTER_PORT": str(self.port),
            "ROUTER_LOG_FORMAT": "json",
            "ROUTER_RETRY_BASE_DELAY": "0.05",
            "ROUTER_RETRY_MAX_DELAY": "0.5",
            **({"ROUTER_WEBHOOK_SECRETS": secret} if secret else {}),
            **(env or {}),
        }
        self.secret = secret
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> RouterProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.command],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait and self.command[0] == "serve":
            self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"router exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll(healthy, timeout=START_SECONDS)

    def push(self, payload: Any, *, headers: Mapping[str, str] | None = None) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = {"Content-Type": "application/json"}
        if self.secret:
            sent["X-Authorization"] = self.secret
        sent.update(headers or {})
        return httpx.post(f"{self.base}/webhooks/actito", content=body, headers=sent, timeout=30)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another router command against the same settings (e.g. `deliveries list`)."""
        return subprocess.run(
            [sys.executable, "-m", "router", *args],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Load:
    """Bounded load from several threads: pushes numbered 0..limit-1 spread over `targets`,
    remembering which got a 202. Use as a context manager; leaving it stops the pushers."""

    def __init__(
        self, targets: list[RouterProcess], *, prefix: str, limit: int, threads: int = 4
    ) -> None:
        self.targets = targets
        self.prefix = prefix
        self.acknowledged: set[int] = set()
        self._lock = threading.Lock()
        self._counter = iter(range(limit))
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._push) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _push(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                with self._lock:
                    seq = next(self._counter, None)
                if seq is None:
                    return
                target = self.targets[seq % len(self.targets)]
                event = {
                    "id": f"{self.prefix}-{seq}",
                    "tableType": "PROFILE_TABLE",
                    "operation": "CREATE",
                    "data": {"seq": seq},
                }
                try:
                    response = client.post(
                        f"{target.base}/webhooks/actito",
                        json=event,
                        headers={"X-Authorization": target.secret or ""},
                    )
                except httpx.HTTPError:
                    continue  # that process died mid-request: not acknowledged
                if response.status_code == 202:
                    with self._lock:
                        self.acknowledged.add(seq)
