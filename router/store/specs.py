"""Action specs, stored once: the `specs` table holds each spec under its `spec_hash`, and a job
names its spec by that hash. A store remembers which specs it has written, so the ingest path
hashes and writes a spec only the first time one of its jobs is accepted."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.rules import spec_hash
from router.store.rows import to_json

SPEC_CACHE_MAX = 4096  # specs remembered per store; a rule set has far fewer actions


def spec_row(spec: Mapping[str, Any]) -> tuple[str, str]:
    """(hash, JSON) of the specs table row for `spec`."""
    return spec_hash(spec), to_json(spec)


class SpecCache:
    """The specs a store instance knows to be in its specs table, by spec object.

    Keyed by the identity of the (long-lived, immutable) spec object of a loaded action: every
    job of one action shares it, and looking it up costs no hashing. The entry keeps the object,
    so its id cannot be reused by another while remembered. Spec rows are never deleted, so an
    entry stays true until the database itself changes under the store: a backend forgets
    everything when a transaction that wrote specs rolls back, or when it opens a connection
    (a failover may have lost the latest commits)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[Mapping[str, Any], str]] = {}

    def get(self, spec: Mapping[str, Any]) -> str | None:
        """The hash of `spec` if it is known to be stored, else None."""
        known = self._known.get(id(spec))
        return known[1] if known is not None and known[0] is spec else None

    def remember(self, spec: Mapping[str, Any], digest: str) -> None:
        if len(self._known) >= SPEC_CACHE_MAX:
            self._known.clear()
        self._known[id(spec)] = (spec, digest)

    def clear(self) -> None:
        self._known.clear()
