"""The console's pages: server-rendered HTML (Jinja2, autoescaped), no script, no build step.

The console's own Jinja2 Environment, apart from the rule templates' sandbox: it renders the
router's templates only, and escapes every value (event data is hostile). Every page is sent
with a strict Content-Security-Policy (nothing but this origin's stylesheet; no script, no
frame, forms only to itself). Login turns a token into a session cookie (router.console.auth);
every POST checks the session's CSRF token, and a viewer's session cannot replay or pause.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from router.console import queries
from router.console.auth import COOKIE, CSRF_FIELD, Access, Session
from router.console.params import (
    MAX_CURSOR,
    BadParameter,
    event_query,
    flag,
    job_query,
    pause_request,
)
from router.console.queries import Sources
from router.exceptions import RejectedBody, StoreUnavailable
from router.store.base import PAUSE_KINDS, Status

HERE = Path(__file__).parent
MAX_FORM_BYTES = 1024 * 1024  # largest form (the try page's event included)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = (
    ("overview", "Overview", "/console/"),
    ("rules", "Rules", "/console/rules"),
    ("events", "Events", "/console/events"),
    ("deliveries", "Deliveries", "/console/deliveries"),
    ("dead", "Dead letters", "/console/dead"),
    ("try", "Try an event", "/console/try"),
)

Page = Callable[[Request, Session], Awaitable[Response]]
Control = Callable[[Sources, str, str], Awaitable[dict[str, Any]]]
# Where a pause or resume form sends the browser back to: a fixed few pages, never a URL given.
BACK = {"overview": "/console/", "rules": "/console/rules"}
MAX_NOTICE_TARGET = 300  # characters of a target a notice repeats


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
    env.filters["query"] = lambda params: urlencode(
        {key: value for key, value in params.items() if value not in (None, "", False)}
    )
    return env


def page_routes(src: Sources, access: Access) -> list[BaseRoute]:
    env = environment()

    def html(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        template = env.get_template(name)
        body = template.render(nav=NAV, request=request, **context)
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    def secure(request: Request) -> bool:
        return access.secure_cookie or request.url.scheme == "https"

    def guarded(page: Page, *, changes: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            session = access.session(request.cookies.get(COOKIE))
            if session is None:
                if request.method == "GET":
                    return RedirectResponse("/console/login", 303, headers=SECURITY_HEADERS)
                return html(request, "login.html", 401, error=None, session=None)
            try:
                if request.method == "POST":
                    form = await _form(request)
                    if not access.csrf_ok(session, form.get(CSRF_FIELD)):
                        return _message(
                            request, session, 403, "This form has expired; reload the page."
                        )
                    if changes and not session.may_change:
                        return _message(request, session, 403, "A viewer's token may only look.")
                    request.state.form = form
                return await page(request, session)
            except BadParameter as exc:
                return _message(request, session, 400, str(exc))
            except StoreUnavailable:
                return _message(request, session, 503, "The store is unavailable; retry later.")

        return run

    def _message(request: Request, session: Session | None, status: int, text: str) -> Response:
        return html(request, "message.html", status, session=session, active="", text=text)

    async def login_form(request: Request) -> Response:
        return html(request, "login.html", error=None, session=None)

    async def login(request: Request) -> Response:
        form = await _form(request)
        cookie = access.open_session(form.get("token", ""))
        if cookie is None:
            return html(
                request, "login.html", 401, error="That token was not accepted.", session=None
            )
        response = RedirectResponse("/console/", 303, headers=SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(access.session_seconds),
            path="/console",
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
        return response

    async def logout(request: Request, session: Session) -> Response:
        response = RedirectResponse("/console/login", 303, headers=SECURITY_HEADERS)
        response.delete_cookie(
            COOKIE, path="/console", httponly=True, samesite="strict", secure=secure(request)
        )
        return response

    async def overview(request: Request, session: Session) -> Response:
        data = await queries.overview(src)
        peak = max((m["records"] for m in data["received_per_minute"]), default=0)
        return html(
            request,
            "overview.html",
            session=session,
            active="overview",
            data=data,
            peak=peak,
            notice=_notice(request.query_params),
        )

    async def rules(request: Request, session: Session) -> Response:
        data = await queries.rules(src)
        return html(
            request,
            "rules.html",
            session=session,
            active="rules",
            data=data,
            notice=_notice(request.query_params),
        )

    def control(act: Control, done: Callable[[dict[str, Any]], str]) -> Page:
        """A pause or resume form's action: do it, then back to the page it came from, with
        what happened in the query (shown by _notice)."""

        async def run(request: Request, session: Session) -> Response:
            form: dict[str, str] = request.state.form
            named = {key: form[key] for key in ("rule", "destination") if form.get(key)}
            kind, target = pause_request(named)
            outcome = await act(src, kind, target)
            said = {"done": done(outcome), "kind": kind, "target": target}
            if outcome.get("resumed"):
                said["jobs"] = str(outcome["jobs"])
            back = BACK.get(form.get("back", ""), BACK["overview"])
            return RedirectResponse(f"{back}?{urlencode(said)}", 303, headers=SECURITY_HEADERS)

        return run

    async def events(request: Request, session: Session) -> Response:
        params = request.query_params
        data = await queries.events(src, event_query(params))
        return html(
            request,
            "events.html",
            session=session,
            active="events",
            data=data,
            filters=_filters(params, ("event_id", "profile_id", "q", "table", "operation", "rule")),
            unmatched=flag(params, "unmatched"),
            rule_names=_rule_names(src),
        )

    async def event(request: Request, session: Session) -> Response:
        number = request.path_params["event"]
        explain = flag(request.query_params, "explain")
        data = None
        if number <= MAX_CURSOR:  # larger is no record's number (nor a 64-bit integer)
            data = await queries.event(src, number, explain=explain)
        if data is None:
            return _message(request, session, 404, f"No record #{number} is kept.")
        return html(request, "event.html", session=session, active="events", data=data)

    async def deliveries(request: Request, session: Session) -> Response:
        params = request.query_params
        data = await queries.jobs(src, job_query(params))
        return html(
            request,
            "deliveries.html",
            session=session,
            active="deliveries",
            data=data,
            filters=_filters(params, ("status", "rule", "destination", "since", "until")),
            statuses=[s.value for s in Status],
        )

    async def job(request: Request, session: Session) -> Response:
        job_id = request.path_params["job_id"]
        data = await queries.job(src, job_id)
        if data is None:
            return _message(request, session, 404, "No such delivery job is kept.")
        replayed = request.query_params.get("replayed")
        return html(
            request, "job.html", session=session, active="deliveries", data=data, replayed=replayed
        )

    async def replay_one(request: Request, session: Session) -> Response:
        job_id = request.path_params["job_id"]
        done = await queries.replay(src, [job_id])
        target = f"/console/deliveries/{job_id}?replayed={done['count']}"
        return RedirectResponse(target, 303, headers=SECURITY_HEADERS)

    async def dead(request: Request, session: Session) -> Response:
        params = request.query_params
        filters = _filters(params, ("rule", "destination", "since", "until"))
        data = await queries.jobs(src, job_query({**params, "status": "dead"}))
        return html(
            request,
            "dead.html",
            session=session,
            active="dead",
            data=data,
            filters=filters,
            replayed=params.get("replayed"),
        )

    async def confirm(request: Request, session: Session) -> Response:
        params = request.query_params
        filters = _filters(params, ("rule", "destination", "since", "until"))
        query = job_query({**filters, "status": "dead"}, paged=False)
        found = await queries.count(src, query)
        return html(
            request,
            "confirm.html",
            session=session,
            active="dead",
            filters=filters,
            count=found["count"],
        )

    async def replay_matching(request: Request, session: Session) -> Response:
        form: dict[str, str] = request.state.form
        filters = _filters(form, ("rule", "destination", "since", "until"))
        done = await queries.replay_matching(src, job_query(filters, paged=False))
        target = "/console/dead?" + urlencode({**filters, "replayed": done["count"]})
        return RedirectResponse(target, 303, headers=SECURITY_HEADERS)

    async def try_form(request: Request, session: Session) -> Response:
        return html(
            request, "try.html", session=session, active="try", body="", result=None, error=None
        )

    async def try_event(request: Request, session: Session) -> Response:
        body = request.state.form.get("event", "")
        result, error = None, None
        try:
            result = await asyncio.to_thread(
                queries.try_event, src, body.encode("utf-8", "surrogatepass")
            )
        except RejectedBody as exc:
            error = str(exc)
        except (RecursionError, UnicodeEncodeError):
            error = "the event is not valid JSON text"
        return html(
            request,
            "try.html",
            session=session,
            active="try",
            body=body,
            result=result,
            error=error,
        )

    return [
        Route("/", guarded(overview)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", guarded(logout), methods=["POST"]),
        Route("/rules", guarded(rules)),
        Route("/events", guarded(events)),
        Route("/events/{event:int}", guarded(event)),
        Route("/deliveries", guarded(deliveries)),
        Route("/deliveries/{job_id}", guarded(job)),
        Route("/deliveries/{job_id}/replay", guarded(replay_one, changes=True), methods=["POST"]),
        Route("/dead", guarded(dead)),
        Route("/dead/confirm", guarded(confirm)),
        Route("/dead/replay", guarded(replay_matching, changes=True), methods=["POST"]),
        Route(
            "/pauses",
            guarded(
                control(queries.pause, lambda o: "paused" if o["paused"] else "already"),
                changes=True,
            ),
            methods=["POST"],
        ),
        Route(
            "/pauses/resume",
            guarded(
                control(queries.resume, lambda o: "resumed" if o["resumed"] else "not-paused"),
                changes=True,
            ),
            methods=["POST"],
        ),
        Route("/try", guarded(try_form), methods=["GET"]),
        Route("/try", guarded(try_event), methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def _filters(params: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    """The filters a page was given, as text, for its form and its links."""
    return {
        name: str(params.get(name)).strip()
        for name in names
        if params.get(name) is not None and str(params.get(name)).strip()
    }


def _notice(params: Mapping[str, str]) -> str | None:
    """The sentence a page shows after a pause or resume redirected to it, or None. Made from
    a fixed few sentences: a link cannot make a page say anything else."""
    kind, target = params.get("kind"), params.get("target")
    if kind not in PAUSE_KINDS or not target:
        return None
    if len(target) > MAX_NOTICE_TARGET:
        target = target[:MAX_NOTICE_TARGET] + "…"
    jobs = params.get("jobs", "0")
    said = {
        "paused": f"Paused {kind} {target}: its jobs are held until it is resumed.",
        "already": f"The {kind} {target} was already paused.",
        "resumed": f"Resumed {kind} {target}: "
        f"{jobs if jobs.isdigit() else 0} pending job(s) go again.",
        "not-paused": f"The {kind} {target} is not paused.",
    }
    return said.get(params.get("done", ""))


def _rule_names(src: Sources) -> list[str]:
    ruleset = src.rules()
    return [] if ruleset is None else [rule.name for rule in ruleset.rules]


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each), at most MAX_FORM_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise BadParameter(f"the form is larger than {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace")
    return {key: values[-1] for key, values in parse_qs(text, keep_blank_values=True).items()}
