"""The names a compiled template reads are the ones Jinja's own analysis finds, whether they
come from the cheap reading of a template without statements or from NameTracker."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import templating
from router.sandbox import ENV, NameTracker
from router.templating import TemplateProblem, compile_template


def jinja_names(source: str) -> frozenset[str]:
    tracker = NameTracker(ENV)
    tracker.visit(ENV.parse(source))
    return frozenset(tracker.undeclared_identifiers)


def names(source: str) -> frozenset[str] | None:
    """The names compile_template finds, or None if it refuses the template."""
    with templating.scoped(frozenset(WORDS)):  # every word of the tests is a name in scope
        try:
            return compile_template(source).names
        except TemplateProblem:
            return None


WORDS = ["data", "record", "rule", "x", "y", "loop", "a", "b"]

TEMPLATES = [
    "{{ data.x }} and {{ record.id | string }}",
    "{{ x if y else a }}",
    "{{ [x, y] | join(',') }} {{ {'k': a} }} {{ x[a:b] }} {{ x(y, k=a) }}",
    "{{ x ~ 'a' }} {{ x + y * 2 }} {{ not x and y or a }} {{ x is defined }} {{ 'k' in x }}",
    "{{ loop }}",  # outside a loop, a name like any other
    "{% for x in data.items %}{{ x }}{{ loop.index }}{% endfor %}{{ x }}",
    "{% set a = 1 %}{{ a }}{{ b }}",
    "{% if x %}{{ y }}{% else %}{{ a }}{% endif %}",
    "{% with a = x %}{{ a }}{% endwith %}{{ a }}",
    "{% filter upper %}{{ y }}{% endfilter %}",
]


@pytest.mark.parametrize("source", TEMPLATES)
def test_names_are_jinjas(source: str) -> None:
    assert names(source) == jinja_names(source)


EXPRESSIONS = st.recursive(
    st.sampled_from([*WORDS, "1", "'t'", "true", "none"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([".k", "[0]", "['k']", " | upper", " is defined"])).map(
            "".join
        ),
        st.tuples(inner, st.sampled_from([" + ", " and ", " or ", " ~ ", " in "]), inner).map(
            "".join
        ),
        st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} if {t[1]} else {t[2]})"),
        st.lists(inner, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        inner.map(lambda item: f"not {item}"),
    ),
    max_leaves=6,
)
STATEMENTS = st.sampled_from(
    ["", "{% set x = 1 %}", "{% for a in y %}{{ a }}{% endfor %}", "{% if b %}{% endif %}"]
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions=st.lists(EXPRESSIONS, min_size=1, max_size=3), statement=STATEMENTS)
def test_names_of_any_template_are_jinjas(expressions: list[str], statement: str) -> None:
    source = statement + " text ".join(f"{{{{ {e} }}}}" for e in expressions)
    found = names(source)
    if found is not None:
        assert found == jinja_names(source), source
