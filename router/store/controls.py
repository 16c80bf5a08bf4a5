"""The delivery controls every backend applies when it claims, written once: which destinations
are controlled, how many jobs a claim may take of each, and the SQL conditions that hold back
paused and ordered jobs (each dialect fills in its own parameter style).

A destination is *controlled* while it has a rate or a concurrency (declared in a rule file,
router.destinations) or its circuit is open (router.circuit). A claim takes the jobs of each
controlled destination on their own, under the lock of its row (PostgreSQL `FOR UPDATE`; the
single writer on SQLite), so two workers never both take the last slot:

- concurrency: at most `concurrency` jobs of the destination leased at once, counted in the
  store (jobs_leased), so it holds for the whole deployment;
- rate: each job gets a send time, `not_before`, spaced 1/rate apart from the destination's
  last one (`tat`, a GCRA's theoretical arrival time), no further than LOOKAHEAD ahead: the
  destination never sees more than its rate, however many workers share the store;
- open circuit: one probe job when its time has come and no other probe is out.

The jobs of a batch action (router.batches; its spec has a `batch` table, BATCHED) are claimed
apart: an open circuit holds them as it holds any job, but they take no rate slot and count
against no concurrency when claimed, since many of them go out in one request. The request
takes one slot instead when it is sent (`Store.take_slot`, `slot`): one send time spaced as
the rate allows, and one of the destination's concurrent requests, held in `batch_slots` until
it is answered (or its lease ends).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.circuit import OPEN, CircuitState
from router.store.rows import Row

LOOKAHEAD = 1.0  # seconds of a rate-limited destination's future slots one claim may take

# The columns CONTROLLED_ROW reads, in order (the `destinations` table).
CIRCUIT_COLUMNS = "state, failures, opened_at, probe_at, probe_delay, probe_until"
CONTROLLED_COLUMNS = f"key, rate, concurrency, tat, {CIRCUIT_COLUMNS}"
CONTROLLED_WHERE = "rate IS NOT NULL OR concurrency IS NOT NULL OR state <> 'closed'"

# A job's destination is under a pause's target: the same key, or a key below it (a path
# under a URL prefix ending in /, or any destination of a host:port). `{target}` is the
# target's expression, `{dest}` the job's destination.
UNDER = """
    ({dest} = {target} OR (
        substr({dest}, 1, length({target})) = {target}
        AND (substr({target}, length({target}), 1) = '/'
             OR substr({dest}, length({target}) + 1, 1) = '/')))
"""
PAUSED = (
    "EXISTS (SELECT 1 FROM pauses AS p WHERE (p.kind = 'rule' AND p.target = j.rule) "
    "OR (p.kind = 'destination' AND " + UNDER.format(dest="j.destination", target="p.target") + "))"
)
# The earlier jobs of the same order key that hold a job back. Two probes of jobs_order
# (order_key, status, seq): an earlier pending one, an earlier dead one that holds.
HELD_BY_ORDER = """
    (j.order_key IS NOT NULL AND (
        EXISTS (SELECT 1 FROM jobs AS b WHERE b.order_key = j.order_key
                AND b.status = 'pending' AND b.seq < j.seq)
        OR EXISTS (SELECT 1 FROM jobs AS b WHERE b.order_key = j.order_key
                   AND b.status = 'dead' AND b.seq < j.seq AND b.order_hold = {true})))
"""


# A job `j` of a batch action. `{has_batch}` is the dialect's test of a spec `s` for its key.
BATCHED = "EXISTS (SELECT 1 FROM specs AS s WHERE s.hash = j.spec AND {has_batch})"
SLOT_MARGIN = 5.0  # seconds a batch request's concurrency slot outlives its timeout


@dataclass(frozen=True, slots=True)
class Controlled:
    """A controlled destination's row."""

    key: str
    rate: float | None
    concurrency: int | None
    tat: float | None
    circuit: CircuitState


def circuit_state(row: Row, offset: int = 0) -> CircuitState:
    """CIRCUIT_COLUMNS, from `offset` in `row`."""
    return CircuitState(*(row[offset + i] for i in range(6)))


def controlled(row: Row) -> Controlled:
    """A row of CONTROLLED_COLUMNS."""
    return Controlled(row[0], row[1], row[2], row[3], circuit_state(row, 4))


@dataclass(frozen=True, slots=True)
class Plan:
    """What one claim may take of a controlled destination."""

    count: int
    start: float | None = None  # the first job's send time (rate-limited destinations)
    interval: float = 0.0  # seconds between send times
    probe: bool = False  # the job is its open circuit's probe

    def send_times(self, claimed: int) -> list[float | None]:
        if self.start is None:
            return [None] * claimed
        return [self.start + i * self.interval for i in range(claimed)]

    def tat_after(self, claimed: int) -> float | None:
        """The destination's next free send time once `claimed` jobs took their slots."""
        return None if self.start is None else self.start + claimed * self.interval


def plan(row: Controlled, *, leased: int, limit: int, now: float) -> Plan:
    """How many jobs a claim of at most `limit` may take of `row`'s destination, with `leased`
    of its jobs leased right now."""
    count, probe = limit, False
    circuit = row.circuit
    if circuit.state == OPEN:
        if circuit.probe_at is not None and circuit.probe_at > now:
            return Plan(0)
        if circuit.probe_until is not None and circuit.probe_until >= now:
            return Plan(0)  # a probe is out
        count, probe = 1, True
    if row.concurrency is not None:
        count = min(count, row.concurrency - leased)
    if row.rate is None or count <= 0:
        return Plan(max(count, 0), probe=probe)
    interval = 1.0 / row.rate
    start = max(row.tat or now, now)
    if start > now + LOOKAHEAD:
        return Plan(0)
    count = min(count, int((now + LOOKAHEAD - start) / interval) + 1)
    return Plan(count, start, interval, probe)


def plan_batched(row: Controlled, *, limit: int, now: float) -> Plan:
    """How many jobs of batch actions a claim may take of `row`'s destination: what its
    circuit allows (no rate or concurrency: their requests take slots when sent)."""
    circuit = row.circuit
    if circuit.state != OPEN:
        return Plan(limit)
    if circuit.probe_at is not None and circuit.probe_at > now:
        return Plan(0)
    if circuit.probe_until is not None and circuit.probe_until >= now:
        return Plan(0)
    return Plan(1, probe=True)


def slot(
    rate: float | None, concurrency: int | None, tat: float | None, busy: int, now: float
) -> tuple[float | None, float | None]:
    """A batch request's slot at a destination with these limits, `busy` of its requests in
    flight: (its send time, the destination's next free send time), or (None, None) while
    its concurrency is taken or its next send time is more than LOOKAHEAD away."""
    if concurrency is not None and busy >= concurrency:
        return None, None
    if rate is None:
        return now, None
    start = max(tat or now, now)
    if start > now + LOOKAHEAD:
        return None, None
    return start, start + 1.0 / rate


def order(rows: Sequence[Controlled], exclude: Sequence[str], only: str | None) -> list[Controlled]:
    """The controlled destinations a claim serves: not excluded, and `only` when given."""
    return [r for r in rows if r.key not in exclude and (only is None or r.key == only)]
