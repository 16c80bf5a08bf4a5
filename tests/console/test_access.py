"""Who may use the console: tokens, the session cookie, CSRF, the viewer's limits, and the
headers every page is sent with. Against a real `router serve` (tests/console/conftest.py)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.console.conftest import OPERATOR, VIEWER, Console, event
from tests.sinks import Reply

API_PATHS = ["/overview", "/rules", "/events", "/jobs", "/jobs/count", "/pauses", "/openapi.json"]


@pytest.mark.parametrize("path", API_PATHS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-the-same-length!", f"Basic {OPERATOR}", "Bearer", OPERATOR],
)
def test_the_api_answers_401_with_no_detail_without_a_valid_bearer_token(
    console: Console, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = httpx.get(f"{console.base}/api/v1{path}", headers=headers, timeout=10)
    assert answer.status_code == 401
    assert answer.content == b""
    assert answer.headers["www-authenticate"] == "Bearer"


def test_webhook_secrets_are_no_console_tokens(console: Console) -> None:
    assert console.router.secret is not None
    with console.api(console.router.secret) as api:
        assert api.get("/overview").status_code == 401


def test_pages_ask_for_a_login_and_refuse_a_wrong_token(console: Console) -> None:
    with console.browser(None) as client:
        answer = client.get("/console/events")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login"
        refused = client.post("/console/login", data={"token": "not-a-console-token-at-all"})
        assert refused.status_code == 401
        assert "not accepted" in refused.text
        assert "router_console" not in refused.headers.get("set-cookie", "")
        assert client.post("/console/dead/replay", data={}).status_code == 401


def test_the_session_cookie_is_signed_httponly_and_same_site_strict(console: Console) -> None:
    with console.browser(None) as client:
        answer = client.post("/console/login", data={"token": OPERATOR})
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith("router_console=")
        for flag in ("HttpOnly", "SameSite=strict", "Path=/console"):
            assert flag.lower() in cookie.lower(), cookie
        assert "secure" not in cookie.lower()  # plain HTTP, no ROUTER_CONSOLE_SECURE_COOKIE
        assert OPERATOR not in cookie
        assert client.get("/console/rules").status_code == 200
        # A cookie whose signature does not hold is no session.
        value = client.cookies["router_console"]
        client.cookies.set("router_console", value[:-2] + "xx", path="/console")
        assert client.get("/console/rules").status_code == 303


def test_every_page_sends_a_strict_content_security_policy(console: Console) -> None:
    with console.browser() as client:
        for path in (
            "/console/",
            "/console/login",
            "/console/rules",
            "/console/events",
            "/console/deliveries",
            "/console/dead",
            "/console/try",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, path
            policy = answer.headers["content-security-policy"]
            assert "default-src 'none'" in policy
            assert "script-src" not in policy  # falls back to 'none': no script at all
            assert "frame-ancestors 'none'" in policy
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "<script" not in answer.text


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_a_post_without_the_sessions_csrf_token_is_refused(console: Console) -> None:
    console.sink.script(Reply(400))
    console.push(event("csrf-1", 7, 9))
    job = console.job_of("csrf-1")
    with console.browser() as client:
        page = client.get("/console/dead")
        for token in ("", "forged", _csrf(page.text) + "x"):
            refused = client.post("/console/dead/replay", data={"csrf": token})
            assert refused.status_code == 403
        refused = client.post(f"/console/deliveries/{job['id']}/replay", data={})
        assert refused.status_code == 403


def test_a_viewer_reads_but_cannot_replay(console: Console) -> None:
    with console.api(VIEWER) as api:
        assert api.get("/overview").status_code == 200
        refused = api.post("/jobs/some-job/replay")
        assert refused.status_code == 403
        assert api.post("/dead/replay", json={}).status_code == 403
    with console.browser(VIEWER) as client:
        page = client.get("/console/dead")
        assert page.status_code == 200
        assert "Replay every dead job" not in page.text
        refused = client.post("/console/dead/replay", data={"csrf": _csrf(page.text)})
        assert refused.status_code == 403


def test_logging_out_ends_the_session(console: Console) -> None:
    with console.browser() as client:
        page = client.get("/console/")
        answer = client.post("/console/logout", data={"csrf": _csrf(page.text)})
        assert answer.status_code == 303
        assert client.get("/console/").status_code == 303
