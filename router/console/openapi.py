"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Its schemas are the shapes router.console.queries returns; a test validates real responses
against them, and schemathesis fuzzes the API from it.
"""

from __future__ import annotations

from typing import Any

from router.store.base import PAUSE_KINDS, Status
from router.store.reads import MAX_PAGE

_TIME = {"type": ["string", "null"], "format": "date-time"}
_TEXT = {"type": ["string", "null"]}
_ANY_OBJECT = {"type": "object"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": extra,
    }


_COUNTS = _object(
    {
        "jobs": {"type": "integer"},
        "matched": {"type": "integer"},
        "delivered": {"type": "integer"},
        "retrying": {"type": "integer"},
        "dead": {"type": "integer"},
        "shadow": {"type": "integer"},
        "last": _TIME,
    }
)
_JOB = _object(
    {
        "id": {"type": "string"},
        "rule": {"type": "string"},
        "action_index": {"type": "integer"},
        "action_type": {"type": "string"},
        "destination": {"type": "string"},
        "status": {"type": "string", "enum": [s.value for s in Status]},
        "attempts": {"type": "integer"},
        "created_at": _TIME,
        "updated_at": _TIME,
        "next_at": _TIME,
        "last_error": _TEXT,
        "event_id": _TEXT,
        "ruleset_version": {"type": "string"},
    }
)
_LISTED_JOB = {
    **_JOB,
    "properties": {**_JOB["properties"], "event": {"type": "integer"}},
    "required": [*_JOB["required"], "event"],
}
_EVENT = _object(
    {
        "id": {"type": "integer"},
        "event_id": _TEXT,
        "received_at": _TIME,
        "ruleset_version": {"type": "string"},
        "matched": {"type": "array", "items": {"type": "string"}},
        "record": _ANY_OBJECT,
    }
)
_EXPLAIN = _object(
    {
        "ruleset": _TEXT,
        "not_matched": {
            "type": "array",
            "items": _object(
                {
                    "rule": {"type": "string"},
                    "reason": {"type": "string"},
                    "lines": {"type": "array", "items": {"type": "string"}},
                }
            ),
        },
    }
)
_ERROR = _object({"error": {"type": "string"}})
_PAUSE = _object(
    {
        "kind": {"type": "string", "enum": list(PAUSE_KINDS)},
        "target": {"type": "string"},
        "since": _TIME,
    }
)
_CIRCUIT = _object({"destination": {"type": "string"}, "state": {"type": "string"}})

SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "Counts": _COUNTS,
    "Job": _JOB,
    "ListedJob": _LISTED_JOB,
    "Event": _EVENT,
    "Explain": _EXPLAIN,
    "Pause": _PAUSE,
    "Circuit": _CIRCUIT,
    "Overview": _object(
        {
            "ruleset": {
                "oneOf": [
                    {"type": "null"},
                    _object({"version": {"type": "string"}, "rules": {"type": "integer"}}),
                ]
            },
            "last_reload": {
                "oneOf": [
                    {"type": "null"},
                    _object(
                        {
                            "ok": {"type": "boolean"},
                            "at": _TIME,
                            "version": _TEXT,
                            "errors": {"type": "array", "items": {"type": "string"}},
                        }
                    ),
                ]
            },
            "queue": _object(
                {
                    "pending": {"type": "integer"},
                    "dead": {"type": "integer"},
                    "oldest_pending_age": {"type": ["number", "null"]},
                }
            ),
            "received_per_minute": {
                "type": "array",
                "items": _object({"minute": _TIME, "records": {"type": "integer"}}),
            },
            "destinations": {
                "type": "array",
                "items": _object(
                    {
                        "destination": {"type": "string"},
                        "hour": _ref("Counts"),
                        "day": _ref("Counts"),
                        "last_error": {
                            "oneOf": [
                                {"type": "null"},
                                _object({"error": {"type": "string"}, "at": _TIME}),
                            ]
                        },
                        "circuit": _TEXT,
                        "paused_by": _TEXT,
                        "pausable": {"type": "boolean"},
                    }
                ),
            },
            "paused": {"type": "array", "items": _ref("Pause")},
            "circuits": {"type": "array", "items": _ref("Circuit")},
            "now": _TIME,
        }
    ),
    "Rules": _object(
        {
            "ruleset": _TEXT,
            "rules": {
                "type": "array",
                "items": _object(
                    {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "enabled": {"type": "boolean"},
                        "mode": {"type": "string", "enum": ["live", "shadow"]},
                        "file": {"type": "string"},
                        "line": {"type": "integer"},
                        "match": {"type": "array", "items": {"type": "string"}},
                        "actions": {
                            "type": "array",
                            "items": _object(
                                {"type": {"type": "string"}, "destination": {"type": "string"}}
                            ),
                        },
                        "hour": _ref("Counts"),
                        "day": _ref("Counts"),
                        "last_match": _TIME,
                        "paused_since": _TIME,
                    }
                ),
            },
        }
    ),
    "EventPage": _object(
        {
            "items": {"type": "array", "items": _ref("Event")},
            "next_cursor": _TEXT,
            "searched_to": {"type": ["integer", "null"]},
        }
    ),
    "EventDetail": _object(
        {
            "event": _ref("Event"),
            "jobs": {"type": "array", "items": _ref("Job")},
            "explain": {"oneOf": [{"type": "null"}, _ref("Explain")]},
        }
    ),
    "JobPage": _object(
        {"items": {"type": "array", "items": _ref("ListedJob")}, "next_cursor": _TEXT}
    ),
    "JobDetail": _object(
        {
            "job": _ref("Job"),
            "request": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "error": {"type": "string"}},
                "required": ["type"],
            },
            "attempts": {
                "type": "array",
                "items": _object(
                    {
                        "number": {"type": "integer"},
                        "at": _TIME,
                        "outcome": {"type": "string"},
                        "status_code": {"type": ["integer", "null"]},
                        "error": _TEXT,
                        "duration": {"type": "number"},
                        # What the destination answered: at most 1,024 characters, secrets
                        # masked; null when it answered nothing.
                        "response": _TEXT,
                    }
                ),
            },
            "next_attempt_at": _TIME,
            "record": _ANY_OBJECT,
        }
    ),
    "Count": _object({"count": {"type": "integer"}}),
    "Replayed": _object(
        {"replayed": {"type": "array", "items": {"type": "string"}}, "count": {"type": "integer"}}
    ),
    "ReplayFilter": {
        "type": "object",
        "properties": {
            "rule": {"type": "string"},
            "destination": {"type": "string"},
            "since": {"type": "string", "format": "date-time"},
            "until": {"type": "string", "format": "date-time"},
        },
        "additionalProperties": False,
    },
    "Pauses": _object(
        {
            "pauses": {"type": "array", "items": _ref("Pause")},
            "circuits": {"type": "array", "items": _ref("Circuit")},
        }
    ),
    "PauseTarget": {
        "type": "object",
        "properties": {
            "rule": {"type": "string", "description": "a rule's name"},
            "destination": {
                "type": "string",
                "description": "a destination: its URL as in [[destination]], host:port "
                "(every destination on that host), its key (host:port/path), or smtp, actito...",
            },
        },
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    },
    "Paused": _object(
        {
            "kind": {"type": "string", "enum": list(PAUSE_KINDS)},
            "target": {"type": "string"},
            "paused": {"type": "boolean"},
        }
    ),
    "Resumed": _object(
        {
            "kind": {"type": "string", "enum": list(PAUSE_KINDS)},
            "target": {"type": "string"},
            "resumed": {"type": "boolean"},
            "jobs": {"type": "integer"},
        }
    ),
    "DryRun": {
        "type": "object",
        "properties": {"ruleset": _TEXT, "records": {"type": "array", "items": _ANY_OBJECT}},
        "required": ["ruleset", "records"],
    },
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_CURSOR = _query(
    "cursor", {"type": "string", "pattern": "^[0-9]{1,18}$"}, "next_cursor of the previous page"
)
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE}, "rows per page")
_JOB_FILTERS = [
    _query("status", {"type": "string", "enum": [s.value for s in Status]}, "job status"),
    _query("rule", {"type": "string"}, "rule name"),
    _query("destination", {"type": "string"}, "destination (an HTTP host, smtp, log...)"),
    _query("since", {"type": "string", "format": "date-time"}, "created at or after"),
    _query("until", {"type": "string", "format": "date-time"}, "created before"),
]


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(schema: str, *more: str) -> dict[str, Any]:
    responses: dict[str, Any] = {
        "200": {"description": "OK", "content": _json_content(_ref(schema))},
        "401": {"description": "no valid token"},
    }
    for status in more:
        responses[status] = {"description": _WHY[status], "content": _json_content(_ref("Error"))}
    return responses


_WHY = {
    "400": "a parameter or the body is not valid",
    "403": "a viewer's token may not change anything",
    "404": "no such record or job",
    "413": "the body is too large",
    "422": "the body is JSON but no ACTITO event",
    "503": "the store is unavailable; retry later",
}


def _get(summary: str, schema: str, parameters: list[dict[str, Any]], *more: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "responses": _answer(schema, "400", "503", *more),
        }
    }


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def document() -> dict[str, Any]:
    job_id = _path_param("job_id", {"type": "string", "minLength": 1, "maxLength": 200})
    event = _path_param("event", {"type": "integer", "minimum": 1, "maximum": 2**62})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ACTITO router console API",
            "version": "1",
            "description": "What the router's console shows and does. Every call needs "
            "`Authorization: Bearer TOKEN` (ROUTER_CONSOLE_TOKENS; a viewer's token, "
            "ROUTER_CONSOLE_VIEWER_TOKENS, only reads). Lists are newest first and paged by "
            "cursor: pass a page's next_cursor to get the next one.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/overview": _get("The router at a glance", "Overview", []),
            "/rules": _get("The serving rules with their counters", "Rules", []),
            "/events": _get(
                "Accepted records, newest first",
                "EventPage",
                [
                    _query("event_id", {"type": "string"}, "the envelope's id, exactly"),
                    _query("profile_id", {"type": "string"}, "data.profileId, exactly"),
                    _query("q", {"type": "string"}, "any text of the record (a data value)"),
                    _query("table", {"type": "string"}, "tableId"),
                    _query("operation", {"type": "string"}, "operation"),
                    _query("rule", {"type": "string"}, "only records this rule matched"),
                    _query("unmatched", {"type": "boolean"}, "only records no rule matched"),
                    _CURSOR,
                    _LIMIT,
                ],
            ),
            "/events/{event}": _get(
                "One record, its jobs and (explain=true) why the other rules did not match",
                "EventDetail",
                [event, _query("explain", {"type": "boolean"}, "explain the misses")],
                "404",
            ),
            "/jobs": _get(
                "Delivery jobs, newest first", "JobPage", [*_JOB_FILTERS, _CURSOR, _LIMIT]
            ),
            "/jobs/count": _get("How many jobs match the filters", "Count", _JOB_FILTERS),
            "/jobs/{job_id}": _get(
                "One job: its rendered request (secrets masked) and every attempt",
                "JobDetail",
                [job_id],
                "404",
            ),
            "/jobs/{job_id}/replay": {
                "post": {
                    "summary": "Replay one dead job",
                    "parameters": [job_id],
                    # 404: an id no route takes (a line break in it); an unknown id replays none.
                    "responses": _answer("Replayed", "403", "404", "503"),
                }
            },
            "/dead/replay": {
                "post": {
                    "summary": "Replay every dead job matching a filter (count them first with "
                    "/jobs/count?status=dead)",
                    "requestBody": {
                        "required": True,
                        "content": _json_content(_ref("ReplayFilter")),
                    },
                    "responses": _answer("Count", "400", "403", "503"),
                }
            },
            "/pauses": {
                **_get("The pauses in force, and every destination's circuit", "Pauses", []),
                "post": {
                    "summary": "Pause the deliveries of a rule or a destination (as `router "
                    "deliveries pause`); paused is false when it already was",
                    "requestBody": {
                        "required": True,
                        "content": _json_content(_ref("PauseTarget")),
                    },
                    "responses": _answer("Paused", "400", "403", "503"),
                },
            },
            "/pauses/resume": {
                "post": {
                    "summary": "Resume the deliveries of a paused rule or destination: its pending "
                    "jobs go again, with the paused time given back; resumed is false when it "
                    "was not paused",
                    "requestBody": {
                        "required": True,
                        "content": _json_content(_ref("PauseTarget")),
                    },
                    "responses": _answer("Resumed", "400", "403", "503"),
                }
            },
            "/try": {
                "post": {
                    "summary": "What the serving rules would do with an event (router test "
                    "--explain); nothing is stored or sent",
                    "requestBody": {"required": True, "content": _json_content({})},
                    "responses": _answer("DryRun", "400", "413", "422"),
                }
            },
        },
    }
