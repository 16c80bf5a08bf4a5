"""One root error for the router; each class is named for what its caller does next.

RouterError
├── RejectedBody          the request body is refused (the intake answers 4xx)
│   ├── MalformedBody     not JSON, not UTF-8            -> 400
│   └── NotAnEvent        JSON, but no ACTITO event      -> 422
├── RuleSetInvalid        fix the rule files (carries every diagnostic)
├── StoreUnavailable      retry later (the intake answers 503)
│   └── StoreGone         the store's file was deleted or replaced: restart the router
├── RenderError           a template failed on this record: the delivery cannot be made
│   └── MissingSecret     ...because this process lacks a secret: retry once it is set
└── DeliveryFailed        one delivery attempt failed
    ├── RetryLater        transient (connection, timeout, 408/429/5xx, SMTP 4xx)
    └── GiveUp            permanent (other 4xx, SMTP 5xx): the job is dead at once
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.diagnostics import Diagnostic


class RouterError(Exception):
    """Root of every error the router raises on purpose."""


class RejectedBody(RouterError):
    """The request body cannot be accepted; the message is one sentence for the sender."""

    status_code = 422


class MalformedBody(RejectedBody):
    status_code = 400


class NotAnEvent(RejectedBody):
    status_code = 422


class RuleSetInvalid(RouterError):
    """A rule set failed validation; `diagnostics` holds every problem found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        super().__init__(f"{len(errors)} error(s) in the rule files")


class StoreUnavailable(RouterError):
    """The store cannot take or give work right now; callers retry later."""


class StoreGone(StoreUnavailable):
    """The store's database file was deleted or replaced while the router ran: nothing can be
    accepted until it is restarted (and whatever the orphaned file held is recovered)."""


class RenderError(RouterError):
    """A template could not be rendered for this record (a missing name, a sandbox refusal)."""


class MissingSecret(RenderError):
    """A template reads a secret this process does not have: a configuration problem to fix
    and retry, not a reason to give the job up."""


class DeliveryFailed(RouterError):
    """One delivery attempt failed. `status_code` is the destination's answer, if any."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RetryLater(DeliveryFailed):
    """A transient failure: try again, no sooner than `retry_after` seconds if given."""

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class GiveUp(DeliveryFailed):
    """A permanent failure: retrying cannot help, the job is dead."""
