"""Prometheus metrics (SPEC §6). One registry per process role instance, so tests can build
several apps side by side."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# The *_created series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_received = Counter(
            "router_records_received",
            "Records accepted at the intake (new, not duplicates).",
            registry=r,
        )
        self.records_duplicate = Counter(
            "router_records_duplicate",
            "Records acknowledged as repeats of earlier pushes.",
            registry=r,
        )
        self.records_unmatched = Counter(
            "router_records_unmatched", "Accepted records that matched no rule.", registry=r
        )
        self.requests_rejected = Counter(
            "router_requests_rejected",
            "Intake requests refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.rule_matches = Counter(
            "router_rule_matches",
            "Records matched, per rule and its mode (live, or shadow: rendered, never sent).",
            ["rule", "mode"],
            registry=r,
        )
        self.deliveries = Counter(
            "router_deliveries",
            "Finished delivery attempts by action type, outcome (done, retry, dead; shadow for "
            "a shadow rule's job, recorded and never sent) and mode (live, shadow).",
            ["action", "outcome", "mode"],
            registry=r,
        )
        self.attempts = Counter(
            "router_delivery_attempts", "Delivery attempts made.", ["action"], registry=r
        )
        self.latency = Histogram(
            "router_delivery_latency_seconds",
            "From acceptance to successful delivery.",
            ["action"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("router_queue_depth", "Pending delivery jobs.", registry=r)
        self.dead_jobs = Gauge(
            "router_dead_jobs", "Dead delivery jobs kept for replay.", registry=r
        )
        self.oldest_pending_age = Gauge(
            "router_oldest_pending_age_seconds", "Age of the oldest pending job.", registry=r
        )
        self.circuit_open = Gauge(
            "router_circuit_open",
            "1 while a destination's circuit is open (its jobs wait; one probe at a time).",
            ["destination"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "router_circuit_transitions",
            "Circuit transitions this process made, by destination and new state.",
            ["destination", "state"],
            registry=r,
        )
        self.reloads = Counter(
            "router_rule_reloads", "Rule reloads by result (ok, invalid).", ["result"], registry=r
        )
        self.ruleset_info = Gauge(
            "router_ruleset_info",
            "The rule-set version serving (value 1).",
            ["version"],
            registry=r,
        )
        self.last_reload_ok = Gauge(
            "router_rule_reload_last_ok",
            "1 if the last reload attempt succeeded, else 0.",
            registry=r,
        )

        # The child series of rule_matches by (rule, mode): labels() costs a lock and a few
        # conversions on every push; the children are kept (a series is never removed).
        self._rule_match_children: dict[tuple[str, str], Any] = {}

    def rule_match(self, rule: str, mode: str) -> Any:
        """rule_matches.labels(rule=rule, mode=mode), kept."""
        key = (rule, mode)
        child = self._rule_match_children.get(key)
        if child is None:
            child = self.rule_matches.labels(rule=rule, mode=mode)
            self._rule_match_children[key] = child
        return child

    def set_ruleset(self, version: str) -> None:
        self.ruleset_info.clear()
        self.ruleset_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
