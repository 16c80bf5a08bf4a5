"""What an action type is: one class per type, in one module per type, found by name in the
registry (router.actions).

An ActionType says everything its type means: the keys of its `[[rule.action]]` table (with
types, defaults, bounds, and which are templates), how a table compiles into a frozen Action,
how an Action renders for one record (what `router test` prints and a delivery sends), which
destination its jobs count against, how `[[test.action]]` tables check it, how `router test`
prints it, and its Deliverer. The rule files, the dry run, the worker, the CLI and the docs all
read the same registry, so a new action type is one new module.

A Deliverer makes exactly one attempt and reports how it went: a status code (with the head of
the destination's answer, when it has one: Delivered), or RetryLater / GiveUp (carrying that
head too). It never retries by itself and never sleeps: retrying is the worker's business (see
router.retry), so that a failing destination costs a job a row in the store, not a held slot.

Every action may also have `enrich`: data its templates need that the event does not carry,
fetched when the job is delivered (never at intake). A deliverer whose client can fetch such
data offers an Enricher for it (`Deliverer.enrichers`); the worker asks it before rendering.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

from router.checks import Checker, KeyPath, kind_of
from router.excerpts import Excerpt
from router.retry import RetryOverride
from router.rules import ON_DEAD, Action

if TYPE_CHECKING:
    from router.settings import Settings

# Bounds of the `retry` table every action may have (seconds unless named otherwise).
RETRY_ATTEMPTS_RANGE = (1, 100)
RETRY_MAX_AGE_RANGE = (1.0, 30 * 86400.0)
RETRY_KEYS = ("max_attempts", "max_age")


@dataclass(frozen=True, slots=True)
class Key:
    """One key of an action's table, as `router check` knows it and the docs describe it."""

    name: str
    kind: str  # what the docs show: "template", "list of templates", "number", ...
    doc: str
    required: bool = False
    default: Any = None
    bounds: tuple[float, float] | None = None
    template: bool = False  # the value (or each of its values) is a Jinja2 template


# Keys every action type has.
TYPE_KEY = Key("type", "string", "The action type.", required=True)
RETRY_KEY = Key(
    "retry",
    "table",
    "`{ max_attempts, max_age }` overriding ROUTER_RETRY_MAX_ATTEMPTS and "
    "ROUTER_RETRY_MAX_AGE for this action (1 to 100 attempts; 1 s to 30 days).",
)
# What `enrich` may fetch: name -> what the templates then see under that name.
ENRICHMENTS: Mapping[str, str] = {
    "profile": "the ACTITO profile of a profile-table record, as it is when the job is delivered",
}
ENRICH_KEY = Key(
    "enrich",
    "list of strings",
    '`["profile"]`: fetch the record\'s ACTITO profile when the job is delivered, for the '
    "templates (`profile.attributes.NAME`, ...).",
)
ORDER_BY_KEY = Key(
    "order_by",
    "template",
    "Deliver the jobs whose key renders the same (`{{ data.profileId }}`) one at a time, in "
    "the order their records were accepted.",
    template=True,
)
ON_DEAD_KEY = Key(
    "on_dead",
    "string",
    'With `order_by`: when a job dies, `"continue"` lets the later jobs of its key go; '
    '`"hold"` keeps them waiting until it is replayed or discarded.',
    default="continue",
)
COMMON_KEYS = (TYPE_KEY, RETRY_KEY, ENRICH_KEY, ORDER_BY_KEY, ON_DEAD_KEY)


@dataclass(frozen=True, slots=True)
class Delivered:
    """A delivered attempt: the destination's status code (None where there is none) and the
    head of its answer (router.excerpts; None: it answered nothing to show)."""

    status: int | None
    response: Excerpt | None = None


def delivered(result: Delivered | int | None) -> Delivered:
    """What `Deliverer.deliver` returned, as Delivered (a bare status has no excerpt)."""
    return result if isinstance(result, Delivered) else Delivered(result)


class Enricher(Protocol):
    """Fetches one kind of data for the templates of a job, when it is delivered."""

    async def fetch(self, record: Mapping[str, Any]) -> Any:
        """The data for `record`, as its templates see it. Raises RetryLater for a transient
        failure and GiveUp when the data cannot exist (the job is then dead, with the reason);
        never waits longer than its own limits make it."""


class Deliverer(abc.ABC):
    """Sends rendered actions of one type.

    Lifecycle: built by `from_settings`, `start()` once before the first delivery (open pools
    and clients; it runs inside the worker's event loop), `close()` once at shutdown. `deliver`
    may be called concurrently; concurrency limits are the worker's, a deliverer only bounds
    what its own pools need.
    """

    type: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build a deliverer from the settings; no I/O here."""

    async def start(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Open pools and clients. Called once, inside the running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release what `start` opened. Must be safe to call when `start` was never called."""

    def enrichers(self) -> Mapping[str, Enricher]:
        """What this deliverer's client can fetch for `enrich`, by name (see ENRICHMENTS);
        usable once `start` has run. Default: nothing."""
        return {}

    @abc.abstractmethod
    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> Delivered | int | None:
        """Make one delivery attempt of `rendered`.

        Returns the destination's status code (None where there is none), or Delivered with it
        and the head of the answer. Raises RetryLater for a transient failure and GiveUp for a
        permanent one (with `response`, the head of the answer, when there was one); every
        other exception is a bug. Error messages are one sentence and must never hold a secret:
        no header values, no URL query or userinfo, no password. The head of an answer is read
        bounded (router.excerpts.READ_BYTES) and may hold what the destination echoed: the
        worker masks the rendered request's secrets in it before it is stored; a deliverer
        masks the credentials of its own settings (a password, an access token).
        """


class ActionType(abc.ABC):
    """One action type. Instances are registered once (router.actions.register) and only read.

    `keys` lists the keys of the type's table besides `type` and `retry`; `rendered` the keys of
    what `render` returns besides `type` (the `router test --format json` shape); `test_keys`
    what a `[[test.action]]` table may check (default: `rendered`).
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the docs
    keys: ClassVar[tuple[Key, ...]]
    rendered: ClassVar[tuple[str, ...]]
    shown_when_set: ClassVar[tuple[str, ...]] = ()  # rendered keys a dry run omits when None
    deliverer: ClassVar[type[Deliverer]]

    @property
    def test_keys(self) -> tuple[str, ...]:
        return self.rendered

    @abc.abstractmethod
    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        """Check the table `raw` (its keys are known to be the type's own) and build the
        Action, reporting every problem to `checker`; None when any was reported."""

    @abc.abstractmethod
    def render(self, action: Any, context: Mapping[str, Any]) -> dict[str, Any]:
        """Render every template of `action` with `context` (router.templating.build_context)
        into {"type": name, ...}: what a delivery sends and `router test` shows. Raises
        RenderError naming the key ("template for url: ..."), also when a rendered value fails
        the type's own checks, so a dry run meets the very error a delivery would."""

    def destination(self, action: Any) -> str:
        """The destination a job of `action` counts against: the worker bounds concurrency
        per destination. Default: one destination for the whole type."""
        return self.name

    def expected(self, checker: Checker, path: KeyPath, key: str, value: Any) -> Any:
        """A value a `[[test.action]]` table gives for `key` (one of test_keys), checked;
        default: a string."""
        return checker.text(path, value)

    def compare(self, key: str, want: Any, rendered: Mapping[str, Any]) -> tuple[str, Any] | None:
        """None when `rendered` satisfies `key = want` in a `[[test.action]]` table, else (what
        is wrong, the value seen). Default: equality."""
        if key not in rendered:
            return f"a {self.name} action has no '{key}'", None
        actual = rendered[key]
        return None if actual == want else (f"the rendered {key} differs", actual)

    def describe(self, rendered: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        """How `router test` prints a rendered action: a summary after the type name, then
        (label, text) blocks. Default: every rendered key as a block."""
        blocks = [
            (key, value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
            for key, value in rendered.items()
            if key != "type" and value is not None
        ]
        return "", blocks

    def make_deliverer(self, settings: Settings) -> Deliverer:
        return self.deliverer.from_settings(settings)


def compile_retry(checker: Checker, path: KeyPath, value: Any) -> RetryOverride:
    """The `retry` table of an action (absent: the global settings apply)."""
    table = {} if value is None else checker.table(path, value, RETRY_KEYS) or {}
    attempts = table.get("max_attempts")
    if attempts is not None:
        attempts = checker.number(
            (*path, "max_attempts"), attempts, RETRY_ATTEMPTS_RANGE, integer=True
        )
    age = table.get("max_age")
    if age is not None:
        age = checker.number((*path, "max_age"), age, RETRY_MAX_AGE_RANGE)
    return RetryOverride(
        max_attempts=None if attempts is None else int(attempts),
        max_age=None if age is None else float(age),
    )


def compile_order(checker: Checker, path: KeyPath, table: Mapping[str, Any]) -> dict[str, Any]:
    """An action's `order_by` and `on_dead`, as Action fields (absent: not ordered). The key
    sees the record (`record`, `data`, `rule`), never a secret: it is not sent anywhere."""
    order_by = None
    if table.get("order_by") is not None:
        order_by = checker.template((*path, "order_by"), table["order_by"])
        if order_by is not None and order_by.secrets:
            checker.report((*path, "order_by"), "may not read secrets: it is not sent anywhere")
    on_dead = checker.text((*path, "on_dead"), table.get("on_dead", "continue"))
    if on_dead is not None and on_dead not in ON_DEAD:
        checker.choice((*path, "on_dead"), on_dead, ON_DEAD, "on_dead")
    elif "on_dead" in table and "order_by" not in table:
        checker.report((*path, "on_dead"), "only applies with order_by; add order_by or remove it")
    return {"order_by": order_by, "on_dead": on_dead or "continue"}


def compile_enrich(checker: Checker, path: KeyPath, value: Any) -> tuple[str, ...]:
    """The `enrich` list of an action (absent: nothing is fetched)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        checker.report(path, f'must be a list such as ["profile"], not {kind_of(value)}')
        return ()
    names = checker.texts(path, value) or []
    if not value:
        checker.report(path, "is an empty list; remove the key to fetch nothing")
    for index, name in enumerate(names):
        if name not in ENRICHMENTS:
            checker.choice((*path, index), name, list(ENRICHMENTS), "thing to fetch")
        elif name in names[:index]:
            checker.report((*path, index), f"'{name}' is listed twice")
    return tuple(dict.fromkeys(name for name in names if name in ENRICHMENTS))
