"""The API fuzzed from its own OpenAPI document (schemathesis, on the real router): whatever
the parameters and bodies, no answer is a 5xx, and every answer conforms to the document (its
status codes, content types and schemas). Pause and resume are fuzzed too; what the fuzzing
paused is resumed after it."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.console.conftest import OPERATOR, Console

AUTH = {"Authorization": f"Bearer {OPERATOR}"}
EXAMPLES = 15  # per operation: enough to reach every branch of the parameter checks
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.mark.slow  # hundreds of requests to a real router
def test_no_input_gets_a_server_error(console: Console) -> None:
    schema = schemathesis.openapi.from_url(f"{console.base}/api/v1/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 13  # every path the document names
    try:
        _fuzz(operations, console)
    finally:
        _lift_pauses(console)  # whatever the fuzzing paused: the console is shared


def _fuzz(operations: list[Any], console: Console) -> None:
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=f"{console.base}/api/v1", headers=AUTH, checks=CHECKS)

        fuzz()


def _lift_pauses(console: Console) -> None:
    with console.api() as api:
        for pause in api.get("/pauses").json()["pauses"]:
            answer = api.post("/pauses/resume", json={pause["kind"]: pause["target"]})
            assert answer.json()["resumed"], answer.text
