"""Destinations as data: a `[[destination]]` table names a URL prefix and the limits its jobs
share across the whole deployment. Pure.

A destination's key is its URL prefix without the scheme, the port always written and the
host lower-cased: `https://CRM.example.com/api/` is `crm.example.com:443/api/`. An undeclared
host's jobs keep the key they always had, `host:port`, so the key of a declared destination
starts with the key of its host: pausing `host:port` holds every destination on that host.

A job counts against the declared destination with the longest prefix of its action's URL, as
far as the rule writes the URL out (up to the first `{{`); an action whose URL starts with a
value (a base URL in a secret) counts against no declared destination.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

RATE_UNITS = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")
MAX_RATE = 10_000.0  # per second: faster than any worker delivers
_DEFAULT_PORTS = {"http": 80, "https": 443}
# host:port, or a destination named for its kind ("smtp", "actito").
_HOST_PORT = re.compile(r"[a-z0-9.\-\[\]:]+:\d{1,5}|[a-z][a-z0-9_-]*")
# A key as listed (host:port, host:port/path): what key_of_url gives names itself again.
_KEY = re.compile(r"([^\s/?#{}]+:\d{1,5})(/[^?#{]*)?")


@dataclass(frozen=True, slots=True)
class Destination:
    """A declared destination: its key (see the module docstring), the URL as written, and its
    limits (None: no limit of that kind)."""

    key: str
    url: str
    rate: float | None = None  # requests per second, deployment-wide
    concurrency: int | None = None  # requests in flight at once, deployment-wide

    @property
    def limited(self) -> bool:
        return self.rate is not None or self.concurrency is not None


class DestinationProblem(ValueError):
    """Why a destination URL or rate cannot be used, in one sentence."""


def parse_rate(text: str) -> float:
    """`"10/s"`, `"100/min"`, `"5000/h"` -> requests per second."""
    found = _RATE.fullmatch(text.lower())
    if found is None or found[2] not in RATE_UNITS:
        raise DestinationProblem(
            f"{text!r} is not a rate; write a number of requests per s, min or h, as in '10/s'"
        )
    per_second = float(found[1]) / RATE_UNITS[found[2]]
    if not 0 < per_second <= MAX_RATE:
        raise DestinationProblem(f"must be above 0 and at most {MAX_RATE:.0f}/s")
    return per_second


def key_of_url(url: str) -> str:
    """The key of a destination URL (http or https, a host, optional port and path); raises
    DestinationProblem when it is none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError as exc:
        raise DestinationProblem(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port is None:
        raise DestinationProblem(
            f"{url!r} is not an http(s) URL prefix; write it as https://host[:port]/[path]"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise DestinationProblem("a destination URL is a prefix: scheme, host, port and path only")
    if "{" in url:
        raise DestinationProblem("a destination URL is written out: it cannot hold a template")
    return f"{parts.hostname}:{port}{parts.path or '/'}"


def pause_target(text: str) -> str:
    """What `--destination` names, as a key: a URL as in `[[destination]]`, `host:port`, a
    declared destination's key as listed (`host:port/path/`), or a destination named for its
    kind (`smtp`, `actito`)."""
    value = text.strip().lower()
    if _HOST_PORT.fullmatch(value):
        return value
    key = _KEY.fullmatch(text.strip())  # never a URL: a scheme is not followed by a port
    if key:
        return key[1].lower() + (key[2] or "")  # the path keeps its case, as key_of_url keeps it
    if "://" in value:
        return key_of_url(text)
    raise DestinationProblem(
        f"{text!r} is neither a destination URL (https://host/path) nor host:port[/path]"
    )


def under(destination: str, target: str) -> bool:
    """Whether a job of `destination` is held by a pause of `target` (both keys): the same
    key, or one below it (router.store.controls.UNDER says the same in SQL)."""
    if destination == target:
        return True
    if not destination.startswith(target):
        return False
    return target.endswith("/") or destination[len(target)] == "/"


def resolve(url_source: str, host_key: str, declared: Sequence[Destination]) -> str:
    """The destination key of an http action whose URL template is `url_source` and whose host
    key (router.actions.http) is `host_key`: the declared destination with the longest prefix
    of the URL's written-out part, else the host key."""
    if not declared:
        return host_key
    written = url_source.strip().split("{", 1)[0]
    try:
        key = key_of_url(written)
    except DestinationProblem:
        return host_key
    best = ""
    for destination in declared:
        if key.startswith(destination.key) and len(destination.key) > len(best):
            best = destination.key
    return best or host_key
