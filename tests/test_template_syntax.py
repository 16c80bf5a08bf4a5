"""The syntax tree router.template_syntax builds for a simple template is Jinja's, node for node
and line for line; everything else goes to Jinja."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2 import TemplateSyntaxError, nodes

from router.sandbox import ENV
from router.template_syntax import _simple, parse


def dump(node: Any) -> Any:
    """Everything of a tree that a check can read: each node's type, line, fields and
    environment."""
    if isinstance(node, list):
        return [dump(item) for item in node]
    if not isinstance(node, nodes.Node):
        return node
    fields = [(name, dump(getattr(node, name))) for name in node.fields]
    return type(node).__name__, node.lineno, fields, node.environment is ENV


SIMPLE = [
    "",
    "plain text, no expression",
    "{{x}}",
    "https://crm.example.com/hooks/5/{{ data.profileId }}",
    '{"id": {{ data.profileId | tojson }}, "email": {{ data.emailAddress | tojson }}}',
    "{{ record.id }} to {{ rule.name }}",
    "line 1\n\nline 3 {{ a.b.c|lower | upper }}\ntail\n{{ z }}\n",
    "{{\tdata._x1\t}}}",  # a brace after the expression is text
    "a}}b {{ data.if | in }}",  # keywords after a dot and as filter names are names to Jinja
    "{ {x} {{ data.x }}",
    "{{ secrets.TOKEN }}",
]

NOT_SIMPLE = [
    "{{ true }}",
    "{{ None | string }}",
    "{{ not data.x }}",
    "{{ data['x'] }}",
    "{{ data.0 }}",
    "{{ data . x }}",
    "{{ x | default('') }}",
    "{{ x | a.b }}",
    "{{- data.x }}",
    "{{ data.x -}}",
    "{{ data.x\n}}",
    "{{ data.x }}\r\n",
    "{% if x %}{{ x }}{% endif %}",
    "{# note #}{{ x }}",
    "{{ data.x ",
    "{{{ x }}",
    "{{ data.é }}",
    "{{ x is defined }}",
]


@pytest.mark.parametrize("source", SIMPLE)
def test_a_simple_template_is_read_directly_into_jinjas_tree(source: str) -> None:
    tree = _simple(source)
    assert tree is not None, "read by Jinja instead"
    assert dump(tree) == dump(ENV.parse(source))
    assert dump(parse(source)) == dump(tree)


@pytest.mark.parametrize("source", NOT_SIMPLE)
def test_anything_else_is_read_by_jinja(source: str) -> None:
    assert _simple(source) is None
    try:
        expected = dump(ENV.parse(source))
    except TemplateSyntaxError as exc:
        with pytest.raises(TemplateSyntaxError) as raised:
            parse(source)
        assert (raised.value.message, raised.value.lineno) == (exc.message, exc.lineno)
    else:
        assert dump(parse(source)) == expected


# Pieces of templates, the simple and the near-simple, glued at random.
PIECES = st.sampled_from(
    [
        "{{", "}}", "{%", "%}", "{#", "#}", "{", "}", " ", "\t", "\n", "\r", ".", "|", "-",
        "+", "'", '"', "(", ")", "[", "]", "data", "x", "_a1", "0", "true", "None", "not", "if",
        "is", "in", "tojson", "é", "text ",
    ]
)  # fmt: skip
SOURCES = st.lists(PIECES, max_size=14).map("".join)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=SOURCES)
def test_the_direct_reading_never_differs_from_jinja(source: str) -> None:
    tree = _simple(source)
    if tree is None:
        return
    assert dump(tree) == dump(ENV.parse(source)), source
