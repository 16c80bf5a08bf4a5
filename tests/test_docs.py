"""The README documents every setting with its default, and the commands it promises exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from router.settings import Settings

README = (Path(__file__).parents[1] / "README.md").read_text()


def _default(name: str) -> str:
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, list):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value)


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_in_the_readme_with_its_default(name: str) -> None:
    env = f"ROUTER_{name.upper()}"
    rows = [line for line in README.splitlines() if line.startswith(f"| `{env}`")]
    assert rows, f"{env} is missing from the README settings table"
    default = _default(name)
    if default:
        assert f"`{default}`" in rows[0], f"{env}: the README does not give the default {default}"


def test_readme_table_has_no_unknown_settings() -> None:
    documented = set(re.findall(r"^\| `ROUTER_([A-Z_]+)`", README, flags=re.MULTILINE))
    known = {name.upper() for name in Settings.model_fields}
    assert documented - known <= {"SECRET_"}, documented - known
