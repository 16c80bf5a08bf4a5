"""Ordering per key: the order key a job of an action with `order_by` carries. Pure.

The key is the action's `order_by` template rendered with the record (`record`, `data`, `rule`;
no secrets), scoped to the rule and the action, and stored as a digest: the same profile in two
rules is two independent sequences, the store holds 32 characters whatever the event sent, and
nothing of the record is kept beside it. A job is claimable only while no earlier job (in
acceptance order) of its key is pending, or dead and holding (router.store.controls).

A key that cannot be rendered (a field missing, a limit reached) is the empty key: such jobs
are still delivered in order among themselves, never out of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from router.exceptions import RenderError
from router.rules import Action


def order_key(action: Action, rule: str, index: int, record: Mapping[str, Any]) -> str | None:
    """The order key of the job of `action` (the rule's action number `index`) for `record`;
    None when the action is not ordered."""
    template = action.order_by
    if template is None:
        return None
    context = {"record": record, "data": record.get("data"), "rule": {"name": rule}}
    try:
        value = template.render(context, where="order_by")
    except RenderError:
        value = ""
    scoped = f"{rule}\x1f{index}\x1f{value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(scoped).hexdigest()[:32]


def holds(action: Action) -> bool:
    """Whether a dead job of `action` keeps the later jobs of its key waiting."""
    return action.order_by is not None and action.on_dead == "hold"
