"""Templates are parsed and checked at load and turned into code on first render; the same
source compiles once."""

from __future__ import annotations

import pytest

from router.templating import TemplateProblem, compile_template, compile_url_template

NESTED_LOOPS = "{% for a in data.x %}" * 21 + "{{ a }}" + "{% endfor %}" * 21


def test_code_nested_beyond_python_is_a_load_error() -> None:
    # Python refuses 21 nested loops; the template is deep enough to be compiled at load.
    for _ in range(2):  # the problem is kept, and raised again
        with pytest.raises(TemplateProblem, match="nests too deeply"):
            compile_template(NESTED_LOOPS)


def test_same_source_compiles_once_and_renders() -> None:
    source = "{% for a in data.names %}{{ a | upper }},{% endfor %}"
    first, second = compile_template(source), compile_template(source)
    assert first is second
    context = {"data": {"names": ["x", "y"]}}
    assert first.render(context) == "X,Y,"


def test_url_template_is_kept_apart_from_the_plain_one() -> None:
    source = "https://crm.example/{{ data.id }}"
    plain, url = compile_template(source), compile_url_template(source)
    assert plain is not url
    assert plain.render({"data": {"id": "a/b"}}) == "https://crm.example/a/b"
    assert url.render({"data": {"id": "a/b"}}) != plain.render({"data": {"id": "a/b"}})
