"""One root error for the router; each class is named for what its caller does next.

RouterError
├── RejectedBody          the request body is refused (the intake answers 4xx)
│   ├── MalformedBody     not JSON, not UTF-8            -> 400
│   ├── BodyTooLarge      over ROUTER_MAX_BODY_BYTES     -> 413
│   └── NotAnEvent        JSON, but no ACTITO event      -> 422
├── RuleSetInvalid        fix the rule files (carries every diagnostic; router.rulefiles)
├── StoreUnavailable      retry later (the intake answers 503)
│   └── StoreGone         the store's file was deleted or replaced: restart the router
├── RenderError           a template failed on this record: the delivery cannot be made
│   ├── TemplateLimitExceeded  ...it went over its time or size limit
│   └── MissingSecret     ...because this process lacks a secret: retry once it is set
├── DeliveryFailed        one delivery attempt failed
│   ├── RetryLater        transient (connection, timeout, 408/429/5xx, SMTP 4xx)
│   └── GiveUp            permanent (other 4xx, SMTP 5xx): the job is dead at once
├── StartupError          a process cannot start: fix what the message says  (exit status 1)
├── CommandError          a command cannot do its work                      (exit status 1)
└── UsageError            a command is given wrongly                        (exit status 2)

The command line (router.cli) is the one place these become exit statuses; the intake
(router.app) the one place they become HTTP statuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from router.excerpts import Excerpt


class RouterError(Exception):
    """Root of every error the router raises on purpose."""


class RejectedBody(RouterError):
    """The request body cannot be accepted; the message is one sentence for the sender."""

    status_code = 422


class MalformedBody(RejectedBody):
    status_code = 400


class NotAnEvent(RejectedBody):
    status_code = 422


class BodyTooLarge(RejectedBody):
    status_code = 413


class StoreUnavailable(RouterError):
    """The store cannot take or give work right now; callers retry later."""


class StoreGone(StoreUnavailable):
    """The store's database file was deleted or replaced while the router ran: nothing can be
    accepted until it is restarted (and whatever the orphaned file held is recovered)."""


class RenderError(RouterError):
    """A template could not be rendered for this record (a missing name, a sandbox refusal)."""


class TemplateLimitExceeded(RenderError):
    """A render went over its time or size limit: permanent for this record and template."""


class MissingSecret(RenderError):
    """A template reads a secret this process does not have: a configuration problem to fix
    and retry, not a reason to give the job up."""


class DeliveryFailed(RouterError):
    """One delivery attempt failed. `status_code` is the destination's answer, if any, and
    `response` the head of what it answered (router.excerpts), if it answered."""

    def __init__(
        self, message: str, *, status_code: int | None = None, response: Excerpt | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.response = response


class RetryLater(DeliveryFailed):
    """A transient failure: try again, no sooner than `retry_after` seconds if given."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        response: Excerpt | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, response=response)
        self.retry_after = retry_after


class GiveUp(DeliveryFailed):
    """A permanent failure: retrying cannot help, the job is dead."""


class StartupError(RouterError):
    """A process cannot start; the message says why and how to fix it."""


class CommandError(RouterError):
    """A command cannot do its work; the message says why."""


class UsageError(RouterError):
    """A command cannot run as given (arguments, settings, an unreadable input file)."""
