"""The rule language as files: what `router check` and `router test` work on, and what a
starting or reloading process loads.

    loader.py       rules directory -> RuleSet and [[test]] tables, every problem a Diagnostic
    decoding.py     a file decoded one [[NAME]] table at a time, with each header's line
    positions.py    where each key of a TOML document is written (key path -> line)
    schema.py       a rule's match table, and the Context that reports with file:line
    ruletests.py    [[test]] tables: the event, the rules expected to match, the actions
    dryrun.py       what a rule set would do with records, and running the [[test]] tables
    diagnostics.py  one problem in the rule files, located and explained
    lints.py        warnings about valid rules that are almost certainly mistakes
    backtest.py     new rules against the records a store kept, next to the serving ones
    snapshots.py    `router test --update`: what renders now, written into [[test.action]] tables
    scaffold.py     `router new`: a rule file to start from, written from a sample event

Nothing that serves traffic imports this package: a stored job is rebuilt by its action type
(router.actions.registry.parse_action), not by the rule-file tooling.
"""

from router.rulefiles.loader import LoadResult, RuleSetInvalid, load, load_rules

__all__ = ["LoadResult", "RuleSetInvalid", "load", "load_rules"]
