"""The engine's destination key: what per-destination concurrency limits group by."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.actions.registry import destination_of
from router.rulefiles.loader import load_rules
from router.rules import spec_hash


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ('type = "http"\nurl = "https://crm.example.com/c/{{ data.id }}"', "crm.example.com:443"),
        (
            'type = "http"\nurl = "http://Shop.Example.com:8080/x?t={{ secrets.T }}"',
            "shop.example.com:8080",
        ),
        ('type = "http"\nurl = "http://user:pw@127.0.0.1:9/"', "127.0.0.1:9"),
        ('type = "http"\nurl = "https://{{ secrets.HOST }}/x"', None),  # computed: per action
        ('type = "http"\nurl = "{{ secrets.CHAT_WEBHOOK_URL }}"', None),
        ('type = "email"\nto = "a@example.com"\nsubject = "s"\ntext = "t"', "smtp"),
        ('type = "log"\nmessage = "m"', "log"),
    ],
)
def test_destination_key(tmp_path: Path, action: str, expected: str | None) -> None:
    (tmp_path / "r.toml").write_text(f'[[rule]]\nname = "r"\n[[rule.action]]\n{action}\n')
    (loaded,) = load_rules(tmp_path).rules[0].actions
    key = destination_of(loaded)
    assert key == (expected or f"http:{spec_hash(loaded.spec)[:12]}")
