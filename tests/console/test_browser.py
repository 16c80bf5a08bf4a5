"""The console in a real browser: Debian's chromium driven by Playwright.

Log in with the keyboard, push an event to the real intake, find it on the Events page, open the
explain of the rules that did not match, see its job die against a real sink answering 400,
fix the sink, replay from the Dead letters page after the confirmation that counts, and see the
job delivered; pause a rule from the Rules page, see it on the Overview, and resume it. Hostile
event data must not run: any dialog fails the test. A screenshot of each page is taken on the
way, into $ROUTER_SCREENSHOTS (`docs/console` refreshes the documentation's; by default a
temporary directory).

Skipped, with the reason, where chromium is not installed (.ci/browser-tools.sh installs it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.console.conftest import HOSTILE, OPERATOR, event, start_console
from tests.sinks import HttpSink, Reply

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # how long an expectation polls the page before it fails

pytestmark = [
    pytest.mark.slow,  # a browser and a router: tens of seconds on a busy machine
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason="chromium is not installed (run .ci/browser-tools.sh as root, or apt-get install "
        "chromium)",
    ),
]


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ROUTER_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink(Reply(400, body=b'{"error": "unknown list"}')) as s:
        yield s


def test_find_explain_see_it_die_fix_replay_deliver(
    tmp_path: Path, sink: HttpSink, shots: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    expect.set_options(timeout=WAIT_MS)
    router = start_console(tmp_path, sink)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

            def shot(name: str) -> None:
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            # Log in with the keyboard only.
            page.goto(f"{router.base}/console/")
            expect(page).to_have_url(f"{router.base}/console/login")
            shot("login")
            page.keyboard.type(OPERATOR)  # the token field has the focus
            page.keyboard.press("Enter")
            expect(page.get_by_role("heading", name="Overview")).to_be_visible()

            # Push to the real intake: one record the CRM rule takes, with hostile data in it.
            hostile = {f"note{n}": text for n, text in enumerate(HOSTILE)}
            answer = router.push(event("browser-1", 4242, 9, **hostile))
            assert answer.status_code == 202
            assert router.push(event("browser-2", 4243, 1)).status_code == 202

            # Find it on the Events page, open it, explain the rules that did not match.
            page.get_by_role("link", name="Events").click()
            page.get_by_label("Event id").fill("browser-1")
            page.get_by_label("Event id").press("Enter")
            record = page.get_by_role("link", name="#1", exact=True)
            expect(record).to_be_visible()
            shot("events")
            record.click()
            expect(page.get_by_text(HOSTILE[0])).to_be_visible()  # shown as text
            page.get_by_role("link", name="Explain every rule that did not match").click()
            explain = page.locator("ul.explain")
            expect(explain).to_contain_text("deletions")
            expect(explain).to_contain_text('operation: wanted "DELETE", saw "UPDATE"')
            shot("event-explain")

            # Its job dies against the sink's 400 (permanent).
            page.get_by_role("link", name="Dead letters").click()
            for _ in range(40):
                if page.get_by_text("HTTP 400").count():
                    break
                page.wait_for_timeout(250)  # a page reload per poll, bounded by the loop
                page.reload()
            expect(page.locator("td.error").first).to_contain_text("HTTP 400")
            shot("dead-letters")

            # Fix the sink; replay everything dead after the confirmation that counts.
            sink.default = Reply(200)
            page.get_by_role("button", name="Replay every dead job matching these filters…").click()
            expect(page.locator("#count")).to_have_text("1")
            shot("replay-confirm")
            page.get_by_role("button", name="Replay 1 job(s)").click()
            expect(page.get_by_role("status")).to_contain_text("Replayed 1 job(s)")

            # The job is delivered: its page says so, with both attempts.
            page.get_by_role("link", name="Deliveries").click()
            page.get_by_label("Rule").fill("crm-sync")
            page.get_by_label("Rule").press("Enter")
            page.locator("tbody a").first.click()
            for _ in range(40):
                if page.locator(".facts .status.done").count():
                    break
                page.wait_for_timeout(250)
                page.reload()
            expect(page.locator(".facts .status.done")).to_have_text("done")
            expect(page.locator("table")).to_contain_text("400")
            expect(page.get_by_text("Bearer <secret CRM>")).to_be_visible()
            shot("job")
            arrived = sink.wait_for(2)
            assert [r.path for r in arrived] == ["/contacts/4242", "/contacts/4242"]

            page.get_by_role("link", name="Deliveries").click()
            shot("deliveries")
            page.get_by_role("link", name="Rules").click()
            expect(page.get_by_role("row").filter(has_text="crm-sync")).to_be_visible()

            # Pause a rule from its row, with the keyboard; the page says so and offers Resume.
            row = page.get_by_role("row").filter(has_text="deletions")
            row.get_by_role("button", name="Pause rule deletions").focus()
            page.keyboard.press("Enter")
            expect(page.get_by_role("status")).to_have_text(
                "Paused rule deletions: its jobs are held until it is resumed."
            )
            expect(row.locator(".status.paused")).to_have_text("paused")
            expect(row.get_by_role("button", name="Resume rule deletions")).to_be_visible()
            shot("rules")
            page.get_by_role("link", name="Overview").click()
            expect(page.get_by_text("records received", exact=False)).to_be_visible()
            expect(page.locator("#paused")).to_contain_text("deletions")
            shot("overview")
            page.get_by_role("link", name="Rules").click()
            row.get_by_role("button", name="Resume rule deletions").click()
            expect(page.get_by_role("status")).to_contain_text("Resumed rule deletions")
            expect(row.get_by_role("button", name="Pause rule deletions")).to_be_visible()
            expect(row.locator(".status.paused")).to_have_count(0)

            # Try an event: router test --explain in the browser.
            page.get_by_role("link", name="Try an event").click()
            page.get_by_label("Event (JSON)").fill(
                '{"id": "t-1", "tableType": "PROFILE_TABLE", "operation": "DELETE",'
                ' "data": {"profileId": 7, "score": 2}}'
            )
            page.get_by_role("button", name="Try it").click()
            expect(page.locator("section.record")).to_contain_text("deletions")
            expect(page.locator("ul.explain")).to_contain_text("data.score")
            shot("try")

            assert dialogs == [], f"event data ran as script: {dialogs}"
            browser.close()
    finally:
        router.stop()
