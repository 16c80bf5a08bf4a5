"""A template's syntax tree: Jinja's lexer and parser, or, for the commonest templates, the same
tree built directly.

Most templates of a rule set are text with a few `{{ data.profileId }}` or
`{{ data.email | tojson }}` in it, and a rule set of 10,000 rules has tens of thousands of them,
many different only in their text (each rule its own url). Jinja's lexer and parser take about
0.1 ms for one; reading such a template with one regular expression takes a few microseconds.
So `parse` builds the tree itself when every expression of the template is a name, its
attributes and filters without arguments, on one line, and hands everything else (statements,
comments, whitespace control, literals, calls, subscripts, `\\r`, anything unusual) to Jinja.
The tree it builds is the one Jinja's parser builds, node for node and line for line
(tests/test_template_syntax.py compares them), so every check made on it finds the same.
"""

from __future__ import annotations

import re

from jinja2 import nodes

from router.sandbox import ENV

# One expression of a simple template: a name, its attributes, then filters without
# arguments, with blanks only around the name and the pipes (Jinja's own rules for these).
_EXPRESSION = re.compile(
    r"[ \t]*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"((?:[ \t]*\|[ \t]*[A-Za-z_][A-Za-z0-9_]*)*)[ \t]*"
)
# Names Jinja's parser reads as something else at the start of an expression.
_NOT_NAMES = frozenset({"true", "false", "True", "False", "none", "None", "not"})
# What makes a template other than text and `{{ ... }}`, or text Jinja rewrites (newlines).
_NOT_SIMPLE = ("{%", "{#", "\r")


def parse(source: str) -> nodes.Template:
    """The syntax tree of `source`, as ENV.parse gives it (and with its errors)."""
    tree = _simple(source)
    return tree if tree is not None else ENV.parse(source)


def _simple(source: str) -> nodes.Template | None:
    """The tree of a simple template (see the module's docstring), or None for any other."""
    if not _DEFAULT_SYNTAX or any(marker in source for marker in _NOT_SIMPLE):
        return None
    output: list[nodes.Expr] = []
    made: list[nodes.Node] = []  # every node, to set its environment as the parser does
    position, line = 0, 1
    while position < len(source):
        start = source.find("{{", position)
        text = source[position:] if start < 0 else source[position:start]
        if text:
            output.append(nodes.TemplateData(text, lineno=line))
            made.append(output[-1])
            line += text.count("\n")
        if start < 0:
            break
        end = source.find("}}", start + 2)
        found = _EXPRESSION.fullmatch(source, start + 2, end) if end >= 0 else None
        if found is None:
            return None
        path, pipes = found[1].split("."), found[2]
        if path[0] in _NOT_NAMES:
            return None
        expression: nodes.Expr = nodes.Name(path[0], "load", lineno=line)
        made.append(expression)
        for attribute in path[1:]:
            expression = nodes.Getattr(expression, attribute, "load", lineno=line)
            made.append(expression)
        for name in pipes.split("|")[1:]:
            expression = nodes.Filter(expression, name.strip(" \t"), [], [], None, None)
            expression.lineno = line
            made.append(expression)
        output.append(expression)
        position = end + 2
    body = [nodes.Output(output, lineno=output[0].lineno)] if output else []
    tree = nodes.Template(body, lineno=1)
    for node in (tree, *body, *made):  # what the parser's set_environment does, without a walk
        node.environment = ENV
    return tree


def children(node: nodes.Node) -> list[nodes.Node]:
    """node.iter_child_nodes(), as a list, in a third of its time (the checks at load walk
    every node of every template)."""
    found: list[nodes.Node] = []
    for name in node.fields:
        item = getattr(node, name, None)
        if isinstance(item, list):
            found.extend(child for child in item if isinstance(child, nodes.Node))
        elif isinstance(item, nodes.Node):
            found.append(item)
    return found


def walk(tree: nodes.Node) -> list[nodes.Node]:
    """Every node of `tree`, itself first, in the order of the text (as find_all goes)."""
    found: list[nodes.Node] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(reversed(children(node)))
    return found


def _default_syntax() -> bool:
    """Whether ENV reads templates with Jinja's default delimiters and newlines, as the direct
    reading above does."""
    return (
        (ENV.variable_start_string, ENV.variable_end_string) == ("{{", "}}")
        and (ENV.block_start_string, ENV.comment_start_string) == ("{%", "{#")
        and (ENV.line_statement_prefix, ENV.line_comment_prefix) == (None, None)
        and ENV.keep_trailing_newline
        and ENV.newline_sequence == "\n"
        and not ENV.extensions
    )


_DEFAULT_SYNTAX = _default_syntax()
