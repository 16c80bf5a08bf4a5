"""Rule-set load time: `python tests/bench/load.py`.

Loads (reads, validates, compiles, indexes) generated rule sets the way `router check`, `serve`
start-up and every hot reload do: 1,000 rules in one file, 10,000 rules in one file, and 10,000
rules as 100 files of 100. Each rule is small and typical: a match on table, operation and a
JMESPath condition, an http action with a url, a header and a body template, and a log action.
Targets: 10,000 rules <= 2 s (both layouts), 1,000 rules <= 0.3 s. Prints the median of
`--rounds` loads of each, wall and CPU time: cold (nothing compiled yet, as at start-up) and a
reload of the same files (what a hot reload that changed a few rules pays).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router import conditions, templating
from router.rulefiles import lints, load

OPERATIONS = ("CREATE", "UPDATE", "DELETE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT")


def rule_text(n: int) -> str:
    operation = OPERATIONS[n % len(OPERATIONS)]
    return (
        f'[[rule]]\nname = "rule-{n}"\ndescription = "Forward table {16 + n % 50} changes"\n'
        f'[rule.match]\ntableType = "PROFILE_TABLE"\ntableId = "{16 + n % 50}"\n'
        f'operation = "{operation}"\n'
        f"condition = \"data.emailAddress != `null` && data.motherLanguage == 'FR'\"\n"
        f'[[rule.action]]\ntype = "http"\n'
        f'url = "https://crm.example.com/hooks/{n}/{{{{ data.profileId }}}}"\n'
        'headers = { "X-Rule" = "{{ rule.name }}" }\n'
        "body = '''{\"id\": {{ data.profileId | tojson }}, "
        "\"email\": {{ data.emailAddress | tojson }}}'''\n"
        f'[[rule.action]]\ntype = "log"\nmessage = "{{{{ record.id }}}} to {{{{ rule.name }}}}"\n\n'
    )


def write(directory: Path, rules: int, files: int) -> Path:
    directory.mkdir(parents=True)
    per_file = rules // files
    for f in range(files):
        text = "".join(rule_text(f * per_file + i) for i in range(per_file))
        (directory / f"rules-{f:03}.toml").write_text(text)
    return directory


def forget() -> None:
    """Empty the caches a load fills, so the next load is a cold one (a fresh process)."""
    templating._CACHE.clear()
    conditions._compiled.cache_clear()
    conditions._warnings.cache_clear()
    lints._missing_field_comparisons.cache_clear()
    lints._condition_findings.cache_clear()
    lints._template_findings.cache_clear()
    lints._required_keys.cache_clear()


def timed_load(directory: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one load."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = load(directory)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    errors = [d for d in result.diagnostics if d.severity == "error"]
    if result.ruleset is None or errors:
        raise SystemExit(f"the generated rules do not load: {errors[:3]}")
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="loads of each set (median)")
    args = parser.parse_args()
    cases = (
        ("1,000 rules, 1 file", 1_000, 1, 0.3),
        ("10,000 rules, 1 file", 10_000, 1, 2.0),
        ("10,000 rules, 100 files", 10_000, 100, 2.0),
    )
    print(
        f"{'rule set':<24} | {'target s':>8} | {'cold wall s':>11} | {'cold CPU s':>10} | "
        f"{'reload wall s':>13} | {'reload CPU s':>12}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for number, (label, rules, files, target) in enumerate(cases):
            directory = write(Path(tmp) / str(number), rules, files)
            cold, warm = [], []
            for _ in range(args.rounds):
                forget()
                cold.append(timed_load(directory))
                warm.append(timed_load(directory))  # the same files again: a reload
            print(
                f"{label:<24} | {target:>8} | {_median(cold, 0):>11.3f} | "
                f"{_median(cold, 1):>10.3f} | {_median(warm, 0):>13.3f} | "
                f"{_median(warm, 1):>12.3f}"
            )


def _median(times: list[tuple[float, float]], which: int) -> float:
    return statistics.median(t[which] for t in times)


if __name__ == "__main__":
    main()
