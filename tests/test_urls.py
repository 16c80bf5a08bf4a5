"""URL templates: where each value stands, how it is encoded, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from router import urls
from router.sandbox import PlaceholderSecrets
from router.templating import (
    TemplateProblem,
    build_context,
    compile_template,
    compile_url_template,
)

BASE = "https://crm.example.com"


def build(source: str, data: Any, *, secrets: Any = None) -> str:
    """The URL `source` gives for an event item `data` (as a delivery would send it)."""
    template = compile_url_template(source)
    dry = secrets is None
    context = build_context(
        {"id": "e1", "data": data},
        rule="r",
        delivery_id="d1",
        secrets=PlaceholderSecrets() if dry else secrets,
    )
    return urls.build(template.render(context, where="url"), placeholders=dry)


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        # In a path segment: / ? # % and everything else but A-Z a-z 0-9 - . _ ~ are encoded.
        ("/contacts/{{ data.v }}", "../../admin", "/contacts/..%2F..%2Fadmin"),
        ("/c/{{ data.v }}", "%2e%2e/%2e%2e/admin", "/c/%252e%252e%2F%252e%252e%2Fadmin"),
        ("/contacts/{{ data.v }}", "1?admin=true#", "/contacts/1%3Fadmin%3Dtrue%23"),
        ("/contacts/{{ data.v }}", "..;/admin", "/contacts/..%3B%2Fadmin"),
        ("/contacts/{{ data.v }}", "a b\\c", "/contacts/a%20b%5Cc"),
        ("/contacts/{{ data.v }}", "Zoë", "/contacts/Zo%C3%AB"),
        ("/contacts/{{ data.v }}", "a\r\nHost: evil", "/contacts/a%0D%0AHost%3A%20evil"),
        ("/contacts/{{ data.v }}", "-._~09AZaz", "/contacts/-._~09AZaz"),
        ("/contacts/{{ data.v }}", 1204, "/contacts/1204"),
        # In a query value: & = + # too.
        ("/s?q={{ data.v }}&n=1", "x&admin=true", "/s?q=x%26admin%3Dtrue&n=1"),
        ("/s?q={{ data.v }}&n=1", "a+b=c#f", "/s?q=a%2Bb%3Dc%23f&n=1"),
        ("/s?{{ data.v }}=1", "admin=true&x", "/s?admin%3Dtrue%26x=1"),
        # In the fragment.
        ("/s#{{ data.v }}", "a#b?c", "/s#a%23b%3Fc"),
        # The marker characters are no way in: values are stripped of them.
        ("/c/{{ data.v }}", "a\ue002\ue001/b", "/c/a%2Fb"),
        # A lone surrogate (a sender's escape) has no UTF-8 form: it is sent as ?.
        ("/c/{{ data.v }}", "a\ud800", "/c/a%3F"),
        # Values inside if and for blocks are encoded all the same.
        ("/c/{% for p in data.v %}{{ p }}/{% endfor %}", ["a/b", "c"], "/c/a%2Fb/c/"),
        ("/c/{% if data.v %}{{ data.v }}{% endif %}", "x/y", "/c/x%2Fy"),
    ],
)
def test_values_are_encoded_where_they_stand(source: str, value: Any, expected: str) -> None:
    assert build(BASE + source, {"v": value}) == BASE + expected


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("/files/{{ data.v | trusted }}", "a/b?c=1", "/files/a/b?c=1"),
        # Trusted values are inserted as written; only what a URL can never hold is encoded.
        ("/files/{{ data.v | trusted }}", "a b/é%41%", "/files/a%20b/%C3%A9%41%25"),
        ("/files/{{ data.v | trusted }}", "a\r\nb", "/files/a%0D%0Ab"),
        # The rule's own text too.
        ("/fichiers/é t/{{ data.v }}", "x", "/fichiers/%C3%A9%20t/x"),
    ],
)
def test_trusted_values_and_the_rules_text_go_in_as_written(
    source: str, value: Any, expected: str
) -> None:
    assert build(BASE + source, {"v": value}) == BASE + expected


def test_trusted_must_be_the_last_filter() -> None:
    assert build(BASE + "/f/{{ data.v | trusted | lower }}", {"v": "A/B"}) == BASE + "/f/a%2Fb"


def test_a_secret_is_trusted_so_a_base_url_can_live_in_one() -> None:
    secrets = {"BASE": "https://Api.Example.com/v1", "KEY": "k/1"}
    source = "{{ secrets.BASE }}/contacts/{{ data.v }}?key={{ secrets['KEY'] }}"
    assert build(source, {"v": "a/b"}, secrets=secrets) == (
        "https://api.example.com/v1/contacts/a%2Fb?key=k/1"
    )


def test_an_international_host_is_written_in_its_ascii_form() -> None:
    assert build("https://exämple.com/{{ data.v }}", {"v": "x"}) == "https://xn--exmple-cua.com/x"


@pytest.mark.parametrize(
    ("source", "data", "secrets"),
    [
        # After a trusted value, only the rendered text can tell where a value stands.
        ("{{ secrets.BASE }}{{ data.v }}", {"v": ".evil.example/"}, {"BASE": BASE}),
        ("{{ secrets.BASE }}:{{ data.v }}/", {"v": "8080"}, {"BASE": BASE}),
        ("https://{{ secrets.USER }}@{{ data.v }}/", {"v": "evil.example"}, {"USER": "u"}),
        # Behind an if, the load-time check does not look.
        ("https://{% if true %}{{ data.v }}{% endif %}/x", {"v": "evil.example"}, {}),
        ("{% if true %}{{ data.v }}{% endif %}", {"v": "https://evil.example/"}, {}),
    ],
)
def test_a_value_before_the_path_is_refused_when_rendered(
    source: str, data: dict[str, Any], secrets: dict[str, str]
) -> None:
    with pytest.raises(urls.UrlProblem) as caught:
        build(source, data, secrets=secrets)
    assert caught.value.message == urls.AUTHORITY_PROBLEM


@pytest.mark.parametrize(
    "source",
    [
        "https://{{ data.host }}/",
        "{{ data.url }}",
        "https://{{ data.host }}.example.com/x",
        "https://crm.example.com:{{ data.port }}/x",
        "https://{{ data.user }}@crm.example.com/x",
        "http{{ data.s }}://crm.example.com/x",
        "https://crm.example.com{{ data.path }}",
        "\n  https://x{{ data.more | lower }}/",
    ],
)
def test_a_value_before_the_path_is_refused_at_load(source: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_url_template(source)
    assert caught.value.message == urls.AUTHORITY_PROBLEM


@pytest.mark.parametrize(
    "source",
    [
        "https://crm.example.com/{{ data.v }}",
        "https://crm.example.com?q={{ data.v }}",
        "https://crm.example.com#{{ data.v }}",
        "https://{{ data.host | trusted }}/x",
        "{{ secrets.URL }}",
        "https://{{ secrets.HOST }}/{{ data.v }}",
        "{% if data.v %}https://a.example/{% endif %}{{ data.v }}",  # judged when rendered
    ],
)
def test_values_after_the_authority_or_trusted_pass_the_load_check(source: str) -> None:
    compile_url_template(source)


def test_urlencode_in_a_url_is_refused_at_load() -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_url_template("https://x.example/\n{{ data.v | urlencode }}")
    assert "remove the urlencode filter" in caught.value.message
    assert caught.value.lineno == 2


@pytest.mark.parametrize(
    ("source", "data"),
    [
        ("/c/{{ data.v }}", {"v": ".."}),
        ("/c/{{ data.v }}/x", {"v": "."}),
        ("/c/{{ data.v | trusted }}", {"v": "../admin"}),
        ("/c/{{ data.v | trusted }}", {"v": "%2e%2E/admin"}),
        ("/c/{{ data.v | trusted }}", {"v": ".%2e"}),
        ("/c/../admin", {}),
    ],
)
def test_dot_segments_are_refused(source: str, data: dict[str, Any]) -> None:
    with pytest.raises(urls.UrlProblem) as caught:
        build(BASE + source, data)
    assert "path segment is . or .." in caught.value.message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "it is empty"),
        ("not a url", "no scheme, expected http or https"),
        ("ftp://files.example.com/x", "scheme 'ftp', expected http or https"),
        ("http:///only-a-path", "no host"),
        ("http://example.com:99999/", "its host or port is not valid"),
        ("http://example.com/a b", "it holds characters that must be percent-encoded"),
        ("http://example.com/a%zz", "it holds characters that must be percent-encoded"),
        ("http://example.com/é", "it holds characters that must be percent-encoded"),
        ("http://example.com/a/%2E%2e/b", "a path segment is . or .. (perhaps percent-encoded), "
         "which is refused"),
    ],
)  # fmt: skip
def test_check_refuses(url: str, problem: str) -> None:
    with pytest.raises(urls.UrlProblem) as caught:
        urls.check(url)
    assert caught.value.message == problem


def test_check_keeps_the_url_as_it_is() -> None:
    url = "https://u:p%40ss@crm.example.com:8443/a%2Fb/%41?q=%2B&x=%26#f%23"
    parsed = urls.check(url)
    assert str(parsed) == url
    assert parsed.raw_path_qs == "/a%2Fb/%41?q=%2B&x=%26"


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("{{ secrets.HOOK }}", "<secret HOOK>"),
        ("{{ secrets.BASE }}/c/{{ data.v }}", "<secret BASE>/c/a%2Fb"),
        ("https://{{ secrets.HOST }}/c/{{ data.v }}?k={{ secrets.KEY }}",
         "https://<secret HOST>/c/a%2Fb?k=<secret KEY>"),
    ],
)  # fmt: skip
def test_a_dry_run_shows_secret_placeholders_and_still_encodes(source: str, shown: str) -> None:
    assert build(source, {"v": "a/b"}) == shown


def test_a_dry_run_refuses_what_a_delivery_would() -> None:
    with pytest.raises(urls.UrlProblem) as caught:
        build("{{ secrets.BASE }}{{ data.v }}", {"v": "x"})
    assert caught.value.message == urls.AUTHORITY_PROBLEM


def test_marker_characters_in_the_rules_text_are_dropped() -> None:
    assert build(BASE + "/a\ue000b/{{ data.v }}", {"v": "c"}) == BASE + "/ab/c"


def test_an_unmarked_template_is_all_the_rules_text() -> None:
    # An action built without compile_url_template (no markers): nothing is taken for a value.
    template = compile_template(BASE + "/c/{{ data.v }}")
    context = build_context({"data": {"v": "a b"}}, rule="r", delivery_id="d", secrets={})
    assert urls.build(template.render(context)) == BASE + "/c/a%20b"


def test_the_trusted_filter_changes_nothing_elsewhere() -> None:
    context = build_context({"data": {"v": "a/b c"}}, rule="r", delivery_id="d", secrets={})
    assert compile_template("{{ data.v | trusted }}").render(context) == "a/b c"
