"""What the commands share: settings, the rules directory, output helpers and options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from router.exceptions import CommandError, UsageError
from router.settings import Settings

Formatter = argparse.RawDescriptionHelpFormatter
if True:  # a name for argparse's private subparsers type, for the add_<command> signatures
    Sub = argparse._SubParsersAction


def settings() -> Settings:
    """The settings as the environment (and .env) gives them; UsageError if they are invalid."""
    try:
        return Settings()  # type: ignore[call-arg]  # all fields have defaults
    except ValidationError as exc:
        problems = "; ".join(
            f"ROUTER_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise UsageError(f"invalid settings: {problems}") from None


def load_settings(**overrides: Any) -> Settings:
    """The settings with the command's options applied (None: not given); CommandError if
    they are invalid."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise CommandError(f"invalid settings: {problems}") from None


def settings_table() -> str:
    """Every ROUTER_* setting with its default: for --help."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, list):
            default = ",".join(default) or "(none)"
        elif default is None:
            default = "(unset)"
        elif isinstance(default, float) and default.is_integer():
            default = int(default)
        rows.append((f"ROUTER_{name.upper()}", str(default), field.description or ""))
    rows.append(("ROUTER_SECRET_<NAME>", "(unset)", "A template secret, read as secrets.NAME."))
    width = max(len(r[0]) for r in rows)
    return "\n".join(
        f"  {env:<{width}}  {desc} [default: {default}]" for env, default, desc in rows
    )


def rules_dir(given: str | None) -> Path:
    directory = Path(given if given is not None else settings().rules_dir)
    if not directory.is_dir():
        raise UsageError(f"rules directory '{directory}' does not exist or is not a directory")
    return directory


def shown(directory: Path) -> str:
    return f"{directory.as_posix().rstrip('/')}/"


def plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default: text)"
    )


def add_store_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        metavar="URL",
        help="store URL (default: ROUTER_STORE_URL or sqlite:///router.db)",
    )
