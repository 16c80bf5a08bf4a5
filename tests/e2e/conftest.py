from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import RouterProcess
from tests.sinks import HttpSink


def forward_rule(url: str, *, name: str = "forward-all", extra: str = "") -> str:
    """A rule file that forwards every record's data to `url`."""
    return f"""
[[rule]]
name = "{name}"
{extra}
[[rule.action]]
type = "http"
url = "{url}"
headers = {{ X-Rule = "{{{{ rule.name }}}}" }}
timeout = 5
"""


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    return path


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    yield started
    for proc in started:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()
