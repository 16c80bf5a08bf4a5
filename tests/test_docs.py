"""The documents tell the truth: the settings table names every setting with its default, the
rule reference names every key the loader accepts, every TOML rule example passes (or, when
marked, fails) `router check`, and every relative link and #anchor leads somewhere."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from router.actions.registry import REGISTRY, keys_of
from router.rulefiles.schema import MATCH_KEYS
from router.settings import Settings

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SETTINGS_TABLE = ROOT / "docs" / "operations.md"
DOCS = ROOT / "docs"
RULE_REFERENCE = DOCS / "rules.md"
README_MAX_BYTES = 12 * 1024
# Put on the line before a ```toml block whose rule is a deliberate mistake: it must fail check.
FAILS_MARK = "<!-- check: fails -->"

_MARKDOWN = MarkdownIt("commonmark").enable("table")
_RULE_TABLE = re.compile(r"^\s*\[\[rule\]\]\s*(#.*)?$", re.MULTILINE)
_TEST_TABLE = re.compile(r"^\s*\[\[test\]\]\s*(#.*)?$", re.MULTILINE)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


# ---------------------------------------------------------------- reading Markdown


@functools.cache
def _tokens(path: Path) -> list[Token]:
    return _MARKDOWN.parse(path.read_text(encoding="utf-8"))


def _text(inline: Token) -> str:
    """What a heading shows: its text and code, without the Markdown around them."""
    return "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))


def _slug(title: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped (letters, digits, `_`, `-` and spaces
    # stay), each space a hyphen.
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    tokens = _tokens(path)
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = _slug(_text(tokens[index + 1]))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            anchors.add(slug if count == 0 else f"{slug}-{count}")  # GitHub numbers repeats
    return frozenset(anchors)


def _section(path: Path, anchor: str) -> list[Token]:
    """The tokens under the heading with `anchor`, up to the next heading of its level or above."""
    tokens = _tokens(path)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and _slug(_text(tokens[index + 1])) == anchor:
            level = int(token.tag[1:])
            end = next(
                (
                    later
                    for later in range(index + 1, len(tokens))
                    if tokens[later].type == "heading_open" and int(tokens[later].tag[1:]) <= level
                ),
                len(tokens),
            )
            return tokens[index + 3 : end]
    raise AssertionError(f"{path.name} has no heading with the anchor #{anchor}")


def _table_keys(section: list[Token]) -> set[str]:
    """The names in code in the first cell of each body row of the tables in `section`."""
    keys: set[str] = set()
    for index, token in enumerate(section):
        if token.type == "td_open" and section[index - 1].type == "tr_open":
            cell = section[index + 1]
            keys.update(c.content for c in cell.children or () if c.type == "code_inline")
    return keys


# ---------------------------------------------------------------- settings


def _default(name: str) -> str:
    value = Settings.model_fields[name].get_default(call_default_factory=True)
    if isinstance(value, list):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return "" if value is None else str(value)


def _settings_rows() -> list[str]:
    return [
        line
        for line in SETTINGS_TABLE.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `ROUTER_")
    ]


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_in_the_settings_table_with_its_default(name: str) -> None:
    env = f"ROUTER_{name.upper()}"
    rows = [row for row in _settings_rows() if row.startswith(f"| `{env}`")]
    assert rows, f"{env} is missing from the settings table in {SETTINGS_TABLE.name}"
    default = _default(name)
    if default:
        assert f"`{default}`" in rows[0], f"{env}: the settings table does not give {default}"


def test_settings_table_has_no_unknown_settings() -> None:
    documented = set(re.findall(r"^\| `ROUTER_([A-Z_]+)", "\n".join(_settings_rows()), re.M))
    known = {name.upper() for name in Settings.model_fields}
    assert documented - known <= {"SECRET_"}, documented - known


# ---------------------------------------------------------------- rule keys


def test_every_match_key_is_in_the_match_table() -> None:
    documented = _table_keys(_section(RULE_REFERENCE, "rulematch-which-records"))
    assert set(MATCH_KEYS) - documented == set()


def undocumented_action_keys(action_keys: Mapping[str, Iterable[str]]) -> list[str]:
    """The `type.key` names of `action_keys` (action type -> the keys it accepts) that the rule
    reference leaves out of the key table in that type's section ("`http` actions", ...)."""
    missing: list[str] = []
    for kind, keys in action_keys.items():
        documented = _table_keys(_section(RULE_REFERENCE, f"{kind}-actions"))
        # `type` itself is the one key every action shares, documented above the sections.
        missing += [f"{kind}.{key}" for key in keys if key != "type" and key not in documented]
    return missing


def test_every_action_key_of_the_registry_is_documented() -> None:
    action_keys = {name: [key.name for key in keys_of(name)] for name in REGISTRY}
    assert set(action_keys) == {"http", "email", "log", "actito"}
    assert undocumented_action_keys(action_keys) == []


def test_the_action_key_check_finds_a_missing_key() -> None:
    assert undocumented_action_keys({"http": ["type", "url", "no_such_key"]}) == [
        "http.no_such_key"
    ]


# ---------------------------------------------------------------- rule examples


@dataclass(frozen=True)
class Example:
    path: Path
    line: int  # of the opening fence, from 1
    text: str
    fails: bool

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _examples() -> Iterator[Example]:
    for path in DOCUMENTS:
        tokens = _tokens(path)
        for index, token in enumerate(tokens):
            if token.type != "fence" or token.info.strip() != "toml":
                continue
            if not _RULE_TABLE.search(token.content):
                continue
            before = tokens[index - 1] if index else None
            fails = before is not None and before.type == "html_block"
            fails = fails and before is not None and before.content.strip() == FAILS_MARK
            assert token.map is not None
            yield Example(path, token.map[0] + 1, token.content, fails)


EXAMPLES = list(_examples())


def _router(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m router ARGS` in `cwd` with no ROUTER_* variable and no .env file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    return subprocess.run(
        [sys.executable, "-m", "router", *map(str, args)],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_rule_example_passes_check_or_fails_as_marked(example: Example, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "example.toml").write_text(example.text, encoding="utf-8")
    checked = _router("check", rules, cwd=tmp_path)
    if example.fails:
        assert checked.returncode == 1, f"{example} is marked to fail but:\n{checked.stdout}"
        return
    assert checked.returncode == 0, f"{example}:\n{checked.stdout}{checked.stderr}"
    if _TEST_TABLE.search(example.text):  # an example with its own tests must pass them too
        tested = _router("test", rules, cwd=tmp_path)
        assert tested.returncode == 0, f"{example}:\n{tested.stdout}{tested.stderr}"


def test_the_docs_have_rule_examples_of_both_kinds() -> None:
    # A parser change that found no examples (or no marked one) would pass everything above.
    assert any(e.path == README for e in EXAMPLES)
    assert any(not e.fails and e.path == RULE_REFERENCE for e in EXAMPLES)
    assert any(e.fails for e in EXAMPLES)


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fails_mark_stands_before_a_rule_example(path: Path) -> None:
    marks = [t for t in _tokens(path) if t.type == "html_block" and FAILS_MARK in t.content]
    marked = [e for e in EXAMPLES if e.path == path and e.fails]
    assert len(marks) == len(marked), f"{path.name}: a {FAILS_MARK} is not right before a rule"


# ---------------------------------------------------------------- links


def _links(path: Path) -> Iterator[tuple[int, str]]:
    for token in _tokens(path):
        for child in token.children or ():
            target = child.attrGet("href") if child.type == "link_open" else None
            target = child.attrGet("src") if child.type == "image" else target
            if isinstance(target, str):
                yield (token.map[0] + 1 if token.map else 0), target


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_and_headings_that_exist(path: Path) -> None:
    broken: list[str] = []
    for line, target in _links(path):
        if _SCHEME.match(target):
            continue  # another site: not ours to check offline
        file, _, anchor = target.partition("#")
        destination = (path.parent / file).resolve() if file else path
        if not destination.exists():
            broken.append(f"line {line}: {target}: no such file")
        elif anchor and destination.suffix != ".md":
            broken.append(f"line {line}: {target}: an anchor into a file that is not Markdown")
        elif anchor and anchor not in _anchors(destination):
            broken.append(f"line {line}: {target}: no heading with that anchor")
    assert broken == [], f"{path.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_link_check_sees_the_links() -> None:
    targets = {target for _line, target in _links(README)}
    assert "docs/rules.md" in targets
    assert any("#" in target for path in DOCUMENTS for _line, target in _links(path))


def test_slugs_follow_github() -> None:
    assert _slug("`[rule.match]`: which records".replace("`", "")) == "rulematch-which-records"
    assert _slug("router test EVENT.json: what would this event do?") == (
        "router-test-eventjson-what-would-this-event-do"
    )
    assert _slug("E-mail addresses") == "e-mail-addresses"


# ---------------------------------------------------------------- the README


def test_the_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/"


# ---------------------------------------------------------------- the package layout


def test_the_layout_names_every_module_of_the_package() -> None:
    """docs/README.md draws the package in the order data flows through it: every module of
    router/ (and every subpackage) has its line there, and nothing there is gone."""
    layout = (DOCS / "README.md").read_text()
    named = set(re.findall(r"`(router/[\w/]+(?:\.py|/))`", layout))
    package = ROOT / "router"
    present = {
        f"router/{path.relative_to(package).as_posix()}"
        for path in package.glob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    } | {f"router/{path.name}/" for path in package.iterdir() if (path / "__init__.py").exists()}
    assert present - named == set(), "modules missing from the layout in docs/README.md"
    assert named - present == set(), "the layout in docs/README.md names what is gone"
