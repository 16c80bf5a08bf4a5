"""/api/v1 against its OpenAPI document, and the console with hostile event data.

Every answer of the real API is validated against the schema the document gives for it; the
flows the pages offer (find a record, explain it, see a job die, replay it, try an event) are
followed through the API; hostile strings in event data appear escaped, as text, in the pages;
no answer holds a secret value."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.console.conftest import HOSTILE, OPERATOR, SECRET_VALUE, VIEWER, Console, event
from tests.e2e.harness import poll
from tests.sinks import Reply

BASE = "urn:router-console-openapi"


class Schema:
    """The served OpenAPI document, validating an answer against what it says of a path."""

    def __init__(self, document: dict[str, Any]) -> None:
        assert document["openapi"].startswith("3.1")
        self.document = document
        self.registry = Registry().with_resource(BASE, DRAFT202012.create_resource(document))

    def check(self, method: str, path: str, answer: httpx.Response) -> Any:
        operation = self.document["paths"][path][method]
        response = operation["responses"].get(str(answer.status_code))
        assert response is not None, f"{method} {path}: {answer.status_code} is not documented"
        if "content" not in response:
            return None
        schema = response["content"]["application/json"]["schema"]
        body = answer.json()
        # Read where the document names it, so its own references resolve within it.
        validator = jsonschema.Draft202012Validator(
            {"$ref": BASE + schema["$ref"]},
            registry=self.registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(body)
        return body


@pytest.fixture(scope="module")
def schema(console: Console) -> Schema:
    with console.api() as api:
        answer = api.get("/openapi.json")
    assert answer.status_code == 200
    jsonschema.Draft202012Validator.check_schema(answer.json()["components"]["schemas"]["Job"])
    return Schema(answer.json())


def test_every_answer_matches_the_openapi_document(console: Console, schema: Schema) -> None:
    console.sink.script(Reply(400))  # a 400 is permanent: the job dies at once
    console.push(event("api-1", 101, 9, email="a@example.com"))
    console.push(event("api-2", 102, 1))  # matches nothing
    job = console.job_of("api-1")
    with console.api() as api:
        poll(lambda: api.get(f"/jobs/{job['id']}").json()["job"]["status"] == "dead")
        schema.check("get", "/overview", api.get("/overview"))
        rules = schema.check("get", "/rules", api.get("/rules"))
        assert [r["name"] for r in rules["rules"]] == ["crm-sync", "deletions"]
        found = schema.check("get", "/events", api.get("/events", params={"event_id": "api-1"}))
        assert [e["event_id"] for e in found["items"]] == ["api-1"]
        number = found["items"][0]["id"]
        detail = schema.check("get", "/events/{event}", api.get(f"/events/{number}"))
        assert detail["explain"] is None
        assert [j["id"] for j in detail["jobs"]] == [job["id"]]
        unmatched = schema.check("get", "/events", api.get("/events", params={"unmatched": "true"}))
        assert "api-2" in [e["event_id"] for e in unmatched["items"]]
        other = next(e for e in unmatched["items"] if e["event_id"] == "api-2")
        explained = schema.check(
            "get", "/events/{event}", api.get(f"/events/{other['id']}?explain=true")
        )
        reasons = {m["rule"]: m["reason"] for m in explained["explain"]["not_matched"]}
        assert "data.score" in reasons["crm-sync"]
        assert "DELETE" in reasons["deletions"]
        by_value = schema.check("get", "/events", api.get("/events", params={"q": "a@example.com"}))
        assert [e["event_id"] for e in by_value["items"]] == ["api-1"]
        by_profile = schema.check(
            "get", "/events", api.get("/events", params={"profile_id": "102"})
        )
        assert [e["event_id"] for e in by_profile["items"]] == ["api-2"]
        by_rule = schema.check("get", "/events", api.get("/events", params={"rule": "crm-sync"}))
        assert "api-2" not in [e["event_id"] for e in by_rule["items"]]
        dead = schema.check("get", "/jobs", api.get("/jobs", params={"status": "dead"}))
        assert job["id"] in [j["id"] for j in dead["items"]]
        counted = schema.check(
            "get", "/jobs/count", api.get("/jobs/count", params={"status": "dead"})
        )
        assert counted["count"] >= 1
        shown = schema.check("get", "/jobs/{job_id}", api.get(f"/jobs/{job['id']}"))
        assert [a["status_code"] for a in shown["attempts"]] == [400]
        assert shown["request"]["headers"]["Authorization"] == "Bearer <secret CRM>"
        assert shown["request"]["url"].endswith("/contacts/101")
        replayed = schema.check(
            "post", "/jobs/{job_id}/replay", api.post(f"/jobs/{job['id']}/replay")
        )
        assert replayed == {"replayed": [job["id"]], "count": 1}
        poll(lambda: api.get(f"/jobs/{job['id']}").json()["job"]["status"] == "done")
        schema.check("post", "/dead/replay", api.post("/dead/replay", json={"rule": "crm-sync"}))
        tried = schema.check("post", "/try", api.post("/try", json=event("try-1", 5, 9)))
        assert tried["records"][0]["matched"] == ["crm-sync"]
        for bad in (
            api.get("/events", params={"cursor": "-1"}),
            api.get("/jobs", params={"limit": "0"}),
            api.get("/jobs", params={"status": "lost"}),
            api.get("/jobs", params={"since": "yesterday"}),
            api.post("/dead/replay", json={"rules": "x"}),
        ):
            path = "/dead/replay" if bad.request.method == "POST" else bad.request.url.path[7:]
            body = schema.check(bad.request.method.lower(), path, bad)
            assert bad.status_code == 400 and body["error"]
        schema.check("get", "/jobs/{job_id}", api.get("/jobs/no-such-job"))
        schema.check("post", "/try", api.post("/try", content=b"{not json"))
        schema.check("post", "/try", api.post("/try", json={"no": "event"}))


def test_an_attempt_shows_what_the_destination_answered_as_text(
    console: Console, schema: Schema
) -> None:
    answer = "".join(HOSTILE)
    console.sink.script(Reply(400, body=answer.encode()))
    console.push(event("answer-1", 301, 9))
    job = console.job_of("answer-1")
    with console.api() as api:
        poll(lambda: api.get(f"/jobs/{job['id']}").json()["job"]["status"] == "dead")
        shown = schema.check("get", "/jobs/{job_id}", api.get(f"/jobs/{job['id']}"))
    assert [(a["status_code"], a["response"]) for a in shown["attempts"]] == [(400, answer)]
    with console.browser() as client:
        page = client.get(f"/console/deliveries/{job['id']}")
    assert page.status_code == 200
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert (
        '<pre class="response">&lt;script&gt;alert(1)&lt;/script&gt;'
        "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;{{7*7}}</pre>"
    ) in page.text


def test_an_answer_that_echoes_the_secret_shows_it_masked(console: Console) -> None:
    console.sink.script(Reply(400, echo=True))
    console.push(event("echo-1", 302, 9))
    job = console.job_of("echo-1")
    with console.api() as api:
        poll(lambda: api.get(f"/jobs/{job['id']}").json()["job"]["status"] == "dead")
        answer = api.get(f"/jobs/{job['id']}")
    echoed = console.sink.requests[-1]
    assert echoed.headers["Authorization"] == f"Bearer {SECRET_VALUE}"  # it was sent...
    (attempt,) = answer.json()["attempts"]
    assert "Authorization: Bearer <secret CRM>\r\n" in attempt["response"]  # ...and masked
    with console.browser() as client:
        page = client.get(f"/console/deliveries/{job['id']}")
    assert "Authorization: Bearer &lt;secret CRM&gt;" in page.text
    for shown in (answer.text, page.text, console.router.log()):
        assert SECRET_VALUE not in shown
    for stored in console.router.workdir.glob("router.db*"):
        assert SECRET_VALUE.encode() not in stored.read_bytes()


def test_pages_follow_cursor_pagination(console: Console) -> None:
    for n in range(5):
        console.push(event(f"page-{n}", 200 + n, 1))
    with console.api() as api:
        seen: list[str] = []
        cursor = None
        while True:
            params = {"q": "page-", "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = api.get("/events", params=params).json()
            seen += [e["event_id"] for e in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [f"page-{n}" for n in reversed(range(5))]


def test_hostile_event_data_appears_as_text_in_every_page(console: Console) -> None:
    data = {f"h{n}": text for n, text in enumerate(HOSTILE)}
    console.push(event("hostile-<b>1</b>", 666, 9, **data))
    job = console.job_of("hostile-<b>1</b>")
    with console.browser() as client:
        listed = client.get("/console/events", params={"q": "onerror"})
        number = next(
            e["id"]
            for e in httpx.get(
                f"{console.base}/api/v1/events",
                params={"profile_id": "666"},
                headers={"Authorization": f"Bearer {OPERATOR}"},
            ).json()["items"]
        )
        pages = [
            listed,
            client.get(f"/console/events/{number}?explain=true"),
            client.get(f"/console/deliveries/{job['id']}"),
            client.get("/console/deliveries"),
            client.post(
                "/console/try",
                data={
                    "csrf": _csrf(client.get("/console/try").text),
                    "event": str(event("t", 1, 9, **data)).replace("'", '"'),
                },
            ),
        ]
        for page in pages:
            assert page.status_code == 200, page.text
            html = page.text
            assert "<script>alert" not in html
            assert "<img src=x" not in html
            assert "<b>1</b>" not in html
        detail = pages[1].text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
        assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in detail
        assert "&#34;h2&#34;: &#34;{{7*7}}&#34;" in detail  # as sent, not rendered to 49


def _csrf(html: str) -> str:
    import re

    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


def test_no_answer_holds_a_secret_value(console: Console) -> None:
    console.push(event("secret-1", 77, 9))
    job = console.job_of("secret-1")
    with console.api(VIEWER) as api:
        answers = [api.get(p) for p in ("/overview", "/rules", "/events", "/jobs")]
        answers.append(api.get(f"/jobs/{job['id']}"))
        answers.append(api.post("/try", json=event("t", 1, 9)))
    with console.browser() as client:
        answers.append(client.get(f"/console/deliveries/{job['id']}"))
    for answer in answers:
        assert answer.status_code == 200
        assert SECRET_VALUE not in answer.text
        assert OPERATOR not in answer.text and VIEWER not in answer.text
    assert "&lt;secret CRM&gt;" in answers[-1].text
    assert SECRET_VALUE not in console.router.log()
    assert OPERATOR not in console.router.log()


def test_an_id_no_route_takes_gets_the_documented_404(console: Console, schema: Schema) -> None:
    """A line break in a path matches no route under /api/v1 (found by fuzzing): the answer is
    the documented JSON 404, for a replay as for a job."""
    with console.api() as api:
        for method, path, template in (
            ("post", "/jobs/a%0Ab/replay", "/jobs/{job_id}/replay"),
            ("get", "/jobs/a%0Ab", "/jobs/{job_id}"),
        ):
            answer = api.request(method.upper(), path)
            assert answer.status_code == 404
            assert schema.check(method, template, answer)["error"]
