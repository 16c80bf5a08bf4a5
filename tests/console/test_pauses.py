"""Pause and resume from the console and the API, against a real `router serve`
(tests/console/conftest.py): the API's answers against its OpenAPI document, the same
normalisation and messages as `router deliveries pause`, jobs really held and let go, the
Rules and Overview pages' buttons behind CSRF and the operator's role, and hostile names shown
as text. Every test lifts the pauses it made: the console is shared by the package."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.console.conftest import HOSTILE, VIEWER, Console, event
from tests.console.test_api import Schema
from tests.e2e.harness import poll


@pytest.fixture(scope="module")
def schema(console: Console) -> Schema:
    with console.api() as api:
        return Schema(api.get("/openapi.json").json())


@pytest.fixture(autouse=True)
def unpaused(console: Console) -> Iterator[None]:
    """Nothing paused before or after each test."""

    def lift() -> None:
        with console.api() as api:
            for pause in api.get("/pauses").json()["pauses"]:
                api.post("/pauses/resume", json={pause["kind"]: pause["target"]})
            assert api.get("/pauses").json()["pauses"] == []

    lift()
    yield
    lift()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_pause_and_resume_through_the_api(console: Console, schema: Schema) -> None:
    with console.api() as api:
        listed = schema.check("get", "/pauses", api.get("/pauses"))
        assert listed["pauses"] == []
        paused = schema.check("post", "/pauses", api.post("/pauses", json={"rule": "deletions"}))
        assert paused == {"kind": "rule", "target": "deletions", "paused": True}
        again = schema.check("post", "/pauses", api.post("/pauses", json={"rule": "deletions"}))
        assert again["paused"] is False
        host = api.post("/pauses", json={"destination": "HTTPS://Mail.Example.com/Bulk/"})
        assert schema.check("post", "/pauses", host)["target"] == "mail.example.com:443/Bulk/"
        listed = schema.check("get", "/pauses", api.get("/pauses"))
        assert [(p["kind"], p["target"]) for p in listed["pauses"]] == [
            ("rule", "deletions"),
            ("destination", "mail.example.com:443/Bulk/"),
        ]
        assert all(p["since"].endswith("Z") for p in listed["pauses"])
        rules = schema.check("get", "/rules", api.get("/rules"))
        paused_since = {r["name"]: r["paused_since"] for r in rules["rules"]}
        assert paused_since["deletions"] is not None and paused_since["crm-sync"] is None
        overview = schema.check("get", "/overview", api.get("/overview"))
        assert overview["paused"] == listed["pauses"]
        resumed = schema.check(
            "post", "/pauses/resume", api.post("/pauses/resume", json={"rule": "deletions"})
        )
        assert resumed == {"kind": "rule", "target": "deletions", "resumed": True, "jobs": 0}
        twice = api.post("/pauses/resume", json={"rule": "deletions"})
        assert schema.check("post", "/pauses/resume", twice)["resumed"] is False
        by_key = api.post("/pauses/resume", json={"destination": "mail.example.com:443/Bulk/"})
        assert schema.check("post", "/pauses/resume", by_key)["resumed"] is True


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", 'the body must be a JSON object: {"rule": NAME} or {"destination": URL}'),
        (
            b'["deletions"]',
            'the body must be a JSON object: {"rule": NAME} or {"destination": URL}',
        ),
        (b"{}", "name either a rule or a destination"),
        (b'{"rule": "a", "destination": "smtp"}', "name either a rule or a destination"),
        (b'{"rules": "a"}', "unknown key 'rules'; name a rule or a destination"),
        (b'{"rule": 7}', "rule must be text"),
        (b'{"rule": "  "}', "rule needs a rule name"),
        (b'{"destination": ["smtp"]}', "destination must be text"),
    ],
)
def test_a_body_that_names_no_pause_gets_400_with_a_sentence(
    console: Console, schema: Schema, body: bytes, message: str
) -> None:
    with console.api() as api:
        for path in ("/pauses", "/pauses/resume"):
            answer = api.post(path, content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400
            assert schema.check("post", path, answer) == {"error": message}


@pytest.mark.parametrize("destination", ["ftp://crm.example.com/", "crm.example.com", "a:1/b?c"])
def test_a_destination_is_refused_with_the_clis_own_message(
    console: Console, destination: str
) -> None:
    cli = console.router.cli("deliveries", "pause", "--destination", destination)
    assert cli.returncode == 1
    with console.api() as api:
        answer = api.post("/pauses", json={"destination": destination})
    assert answer.status_code == 400
    assert answer.json()["error"] in cli.stderr


def test_a_paused_rules_jobs_wait_until_it_is_resumed(console: Console) -> None:
    with console.api() as api:
        assert api.post("/pauses", json={"rule": "crm-sync"}).json()["paused"] is True
        console.push(event("paused-1", 801, 9))
        held = console.job_of("paused-1")
        # A record of the other rule goes through meanwhile: the worker is not just slow.
        console.push({**event("going-1", 802, 1), "operation": "DELETE"})
        going = console.job_of("going-1")
        poll(lambda: api.get(f"/jobs/{going['id']}").json()["job"]["status"] == "done")
        still = api.get(f"/jobs/{held['id']}").json()["job"]
        assert (still["status"], still["attempts"]) == ("pending", 0)
        resumed = api.post("/pauses/resume", json={"rule": "crm-sync"}).json()
        assert resumed["resumed"] is True and resumed["jobs"] >= 1
        poll(lambda: api.get(f"/jobs/{held['id']}").json()["job"]["status"] == "done")


def test_a_viewer_sees_the_pauses_but_cannot_pause(console: Console) -> None:
    with console.api() as api:
        api.post("/pauses", json={"destination": "smtp"})
    with console.api(VIEWER) as api:
        assert api.get("/pauses").json()["pauses"][0]["target"] == "smtp"
        for path in ("/pauses", "/pauses/resume"):
            refused = api.post(path, json={"rule": "deletions"})
            assert refused.status_code == 403
            assert "operator" in refused.json()["error"]
    with console.browser(VIEWER) as client:
        rules = client.get("/console/rules")
        overview = client.get("/console/")
        assert "<code>smtp</code>" in overview.text  # the state, shown
        for page in (rules, overview):
            assert page.status_code == 200
            assert 'action="/console/pauses' not in page.text  # no button
        forged = client.post(
            "/console/pauses", data={"csrf": _csrf(rules.text), "rule": "deletions"}
        )
        assert forged.status_code == 403
        forged = client.post(
            "/console/pauses/resume", data={"csrf": _csrf(rules.text), "destination": "smtp"}
        )
        assert forged.status_code == 403
    with console.api() as api:
        assert [p["target"] for p in api.get("/pauses").json()["pauses"]] == ["smtp"]


def test_a_pause_form_without_the_sessions_csrf_token_is_refused(console: Console) -> None:
    with console.browser() as client:
        page = client.get("/console/rules")
        for token in (None, "", "forged", _csrf(page.text) + "x"):
            data = {"rule": "deletions", **({} if token is None else {"csrf": token})}
            assert client.post("/console/pauses", data=data).status_code == 403
    with console.api() as api:
        assert api.get("/pauses").json()["pauses"] == []


def test_pause_and_resume_a_rule_from_the_rules_page(console: Console) -> None:
    with console.browser() as client:
        page = client.get("/console/rules")
        assert 'Pause<span class="visually-hidden"> rule deletions</span>' in page.text
        answer = client.post(
            "/console/pauses",
            data={"csrf": _csrf(page.text), "rule": "deletions", "back": "rules"},
        )
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/rules?")
        shown = client.get(answer.headers["location"])
        assert "Paused rule deletions: its jobs are held until it is resumed." in shown.text
        assert 'Resume<span class="visually-hidden"> rule deletions</span>' in shown.text
        overview = client.get("/console/")
        assert "<code>deletions</code>" in overview.text
        answer = client.post(
            "/console/pauses/resume",
            data={"csrf": _csrf(page.text), "rule": "deletions", "back": "overview"},
        )
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/console/?")
        shown = client.get(answer.headers["location"])
        assert "Resumed rule deletions: 0 pending job(s) go again." in shown.text
        assert "Nothing is paused." in shown.text
        again = client.post(
            "/console/pauses/resume", data={"csrf": _csrf(page.text), "rule": "deletions"}
        )
        assert "The rule deletions is not paused." in client.get(again.headers["location"]).text
        # The way back is one of the console's pages, never a URL a form gives.
        away = client.post(
            "/console/pauses",
            data={"csrf": _csrf(page.text), "rule": "deletions", "back": "https://x.example/"},
        )
        assert away.headers["location"].startswith("/console/?")
        # A bad destination is a page that says why, not an error.
        bad = client.post(
            "/console/pauses", data={"csrf": _csrf(page.text), "destination": "ftp://x/"}
        )
        assert bad.status_code == 400
        assert "https://host" in bad.text


def test_pause_a_destination_from_the_overview(console: Console) -> None:
    console.push(event("dest-1", 811, 9))
    job = console.job_of("dest-1")
    key = job["destination"]
    with console.browser() as client:
        page = client.get("/console/")
        assert f'name="destination" value="{key}"' in page.text
        answer = client.post(
            "/console/pauses",
            data={"csrf": _csrf(page.text), "destination": key, "back": "overview"},
        )
        shown = client.get(answer.headers["location"])
        assert f"Paused destination {key}" in shown.text
        with console.api() as api:
            rows = {d["destination"]: d for d in api.get("/overview").json()["destinations"]}
        assert rows[key]["paused_by"] == key
        client.post(
            "/console/pauses/resume",
            data={"csrf": _csrf(page.text), "destination": key, "back": "overview"},
        )
    with console.api() as api:
        assert api.get("/pauses").json()["pauses"] == []


def test_hostile_names_are_shown_as_text(console: Console) -> None:
    hostile_path = "https://evil.example/" + HOSTILE[1].replace(" ", "") + "/"
    with console.api() as api:
        for text in HOSTILE:
            assert api.post("/pauses", json={"rule": text}).status_code == 200
        destination = api.post("/pauses", json={"destination": hostile_path})
        assert destination.status_code == 200, destination.text
        # Text a database cannot hold is made storable: never a server error.
        for odd in (b'{"rule": "a\\u0000b"}', b'{"rule": "\\ud800"}'):
            answer = api.post("/pauses", content=odd, headers={"Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
        targets = [p["target"] for p in api.get("/pauses").json()["pauses"]]
        assert set(HOSTILE) <= set(targets)
    with console.browser() as client:
        page = client.get("/console/")
        notice = client.get(
            "/console/rules",
            params={"done": "paused", "kind": "rule", "target": HOSTILE[0]},
        )
        for shown in (page, notice):
            assert shown.status_code == 200
            assert "<script>alert" not in shown.text
            assert "<img" not in shown.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "{{7*7}}" in page.text  # as sent, not rendered to 49
        assert "Paused rule &lt;script&gt;" in notice.text
        # A link cannot make a page say anything but one of its own sentences.
        odd = client.get("/console/", params={"done": "<b>hi</b>", "kind": "rule", "target": "x"})
        assert "<b>hi" not in odd.text and "&lt;b&gt;hi" not in odd.text
        assert 'role="status"' not in odd.text
    with httpx.Client(base_url=console.base, timeout=10) as raw:
        assert raw.get("/api/v1/pauses").status_code == 401  # no token, no list
