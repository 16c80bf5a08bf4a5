"""Hot reload through a real `router serve`: renames, broken edits, fixes, ConfigMap swaps."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink

SAMPLE = json.loads(
    (
        Path(__file__).parents[1] / "samples/01-data-v1-profile-table-create-one-by-one.json"
    ).read_text()
)


def rule(name: str, url: str) -> str:
    return f"""
[[rule]]
name = "{name}"
[[rule.action]]
type = "http"
url = "{url}"
headers = {{ X-Rule = "{{{{ rule.name }}}}" }}
"""


def ready(router: RouterProcess) -> dict[str, Any]:
    body: dict[str, Any] = router.get("/readyz").json()
    return body


def routed_by(router: RouterProcess, sink: HttpSink, seq: int, expected: set[str]) -> set[str]:
    """Push one event; wait until every rule in `expected` forwarded it (each rule's delivery
    is a job of its own and may arrive later than another's), then return the rules that did."""
    event = {**SAMPLE, "id": f"reload-{seq}", "data": {**SAMPLE["data"], "seq": seq}}
    assert router.push(event).status_code == 202

    def arrived() -> set[str]:
        return {r.headers["X-Rule"] for r in sink.requests if json.loads(r.body).get("seq") == seq}

    with contextlib.suppress(AssertionError):  # the caller's comparison shows what did arrive
        poll(lambda: expected <= arrived() or None)
    return arrived()


def test_reload_scenarios(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "a.toml").write_text(rule("rule-a", sink.url("/a")))
    router = RouterProcess(tmp_path, rules_dir)
    router_factory.append(router)
    router.start()
    first = ready(router)["ruleset"]
    assert routed_by(router, sink, 1, {"rule-a"}) == {"rule-a"}

    # An editor writes a temp file and renames it into place.
    temp = rules_dir / ".b.toml.tmp"
    temp.write_text(rule("rule-b", sink.url("/b")))
    os.rename(temp, rules_dir / "b.toml")
    poll(lambda: ready(router)["ruleset"] != first)
    assert routed_by(router, sink, 2, {"rule-a", "rule-b"}) == {"rule-a", "rule-b"}
    good = ready(router)["ruleset"]

    # A broken edit is refused; the last good set keeps serving and /readyz says why.
    (rules_dir / "b.toml").write_text('[[rule]]\nname = "rule-b"\n[[rule.action]]\ntype = "htp"\n')
    status = poll(lambda: (s := ready(router)) and not s["last_reload"]["ok"] and s)
    assert status["ruleset"] == good
    assert any("b.toml:4" in error for error in status["last_reload"]["errors"])
    assert routed_by(router, sink, 3, {"rule-a", "rule-b"}) == {"rule-a", "rule-b"}
    metrics = router.get("/metrics").text
    assert 'router_rule_reloads_total{result="invalid"}' in metrics

    # The fix is picked up.
    (rules_dir / "b.toml").write_text(rule("rule-b2", sink.url("/b2")))
    poll(lambda: ready(router)["last_reload"]["ok"] and ready(router)["ruleset"] != good)
    assert routed_by(router, sink, 4, {"rule-a", "rule-b2"}) == {"rule-a", "rule-b2"}
    log = router.log()
    assert "b.toml:4" in log  # the refused set's diagnostics were logged


def test_configmap_symlink_swap(
    tmp_path: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    # The layout Kubernetes gives a ConfigMap volume: files are symlinks through `..data`,
    # which is itself a symlink to a timestamped directory, swapped atomically on update.
    mount = tmp_path / "mount"
    mount.mkdir()
    v1 = mount / "..2026_01_01_00_00_00.000000001"
    v1.mkdir()
    (v1 / "rules.toml").write_text(rule("cm-v1", sink.url("/v1")))
    (mount / "..data").symlink_to(v1.name)
    (mount / "rules.toml").symlink_to("..data/rules.toml")
    router = RouterProcess(tmp_path, mount)
    router_factory.append(router)
    router.start()
    assert routed_by(router, sink, 10, {"cm-v1"}) == {"cm-v1"}
    before = ready(router)["ruleset"]

    v2 = mount / "..2026_01_01_00_05_00.000000002"
    v2.mkdir()
    (v2 / "rules.toml").write_text(rule("cm-v2", sink.url("/v2")))
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(v2.name)
    os.rename(tmp_link, mount / "..data")  # the atomic swap
    poll(lambda: ready(router)["ruleset"] != before)
    assert routed_by(router, sink, 11, {"cm-v2"}) == {"cm-v2"}
