"""Notification templates: every one exists and renders in both languages, customer text stays text."""

from __future__ import annotations

import html
import re
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from jinja2 import Environment, UndefinedError

from maildesk.core.workflow import TRANSITIONS
from maildesk.render import (
    LANGUAGES, LATVIAN_KEYWORDS, PARTS, TEMPLATES, Renderer, compile_release, default_templates_dir, mailto,
)

REFUSAL_CODES = (
    "not_allowed_in_status", "role_agent_only", "role_customer_only", "role_system_only", "not_responsible",
    "other_organisation", "not_reporter", "bad_effort", "due_required", "bad_date", "unknown_agent",
    "bad_address", "wrong_ticket_type", "user_exists", "unknown_type",
)
FALLBACK = "ENGLISH FALLBACK REASON"
REPLY_ADDRESS = "support+t0ken@desk.example.lv"
MAILTO = re.compile(r"mailto:[^\s\"<>]+")


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(default_templates_dir())


def sample_context(name: str, **ticket_changes: Any) -> dict[str, Any]:
    """Everything any template may ask for; each template takes what it needs."""
    ticket = {
        "key": "SD-12", "summary": "Printeris nedrukā", "description": "Pēc atjaunināšanas\nprinteris nedrukā.",
        "status": "WAITING FOR CUSTOMER", "type": "Service Request", "reporter": "anna@klients.lv",
        "reporter_name": "Anna Bērziņa", "organisation": "Klients SIA", "assignee": "agent@desk.example.lv",
        "estimate": "3h", "estimate_minutes": 180, "due_date": "2026-12-18",
    }
    ticket.update(ticket_changes)
    return {
        "ticket": None if name == "unknown_sender" else ticket,
        "recipient": {"address": "anna@klients.lv", "name": "Anna Bērziņa", "role": "customer", "language": "lv"},
        "actor": {"address": "agent@desk.example.lv", "name": "Jānis Kalniņš"},
        "support_address": "support@desk.example.lv",
        "reply_address": REPLY_ADDRESS,
        "possible_commands": ["ACCEPT THE SOLUTION", "REOPEN"],
        "channel": "email",
        "from_status": "IN PROGRESS",
        "to_status": "WAITING FOR CUSTOMER",
        "comment": "Lūdzu, pārbaudiet.",
        "internal": False,
        "refusal": {"command": "ACCEPT THE ESTIMATE", "reason_code": "not_responsible", "reason": FALLBACK,
                    "processed": ["ACCEPT THE ESTIMATE"], "ignored": ["Paldies!"]},
        "new_user": {"address": "peteris@klients.lv", "name": "Pēteris Ozols", "organisation": "Klients SIA"},
        "original_subject": "Palīdzība",
        "closes_at": "2026-12-21 17:00",
        "deadline_kind": "first_response",
        "deadline_at": "2026-12-18 12:00",
        "breached": False,
        "command": "ACCEPT THE ESTIMATE",
    }


def links(rendered_part: str) -> list[tuple[str, str, str]]:
    """(address, subject, body) of every mailto link that prefills a reply, decoded as a mail client would."""
    found = []
    for url in MAILTO.findall(rendered_part):
        parts = urlsplit(html.unescape(url))
        fields = parse_qs(parts.query)
        if "body" in fields:
            found.append((unquote(parts.path), fields["subject"][0], fields["body"][0]))
    return found


TEMPLATE_FILES = [(name, language, part) for name in TEMPLATES for language in LANGUAGES for part in PARTS]
EVERY_RENDER = [(name, language) for name in TEMPLATES for language in LANGUAGES]


@pytest.mark.parametrize(("name", "language", "part"), TEMPLATE_FILES)
def test_every_template_exists_in_every_language_and_part(name: str, language: str, part: str) -> None:
    assert (default_templates_dir() / language / f"{name}.{part}.j2").is_file()


def test_every_template_a_workflow_decision_names_exists() -> None:
    named = {template for row in TRANSITIONS for template, _audience in row.notices}
    assert named <= set(TEMPLATES)


@pytest.mark.parametrize(("name", "language"), EVERY_RENDER)
def test_every_template_renders_with_the_ticket_key(renderer: Renderer, name: str, language: str) -> None:
    rendered = renderer.render(name, language, sample_context(name))
    if name == "unknown_sender":
        assert "[SD-" not in rendered.subject
    else:
        assert "[SD-12]" in rendered.subject
        assert "SD-12" in rendered.text
        assert "SD-12" in rendered.html
    assert rendered.subject and "\n" not in rendered.subject
    assert rendered.text.strip() and rendered.html.lstrip().startswith("<!DOCTYPE html>")
    assert "Service Desk" in rendered.text


@pytest.mark.parametrize(("name", "language"), EVERY_RENDER)
def test_html_loads_no_external_resources(renderer: Renderer, name: str, language: str) -> None:
    page = renderer.render(name, language, sample_context(name)).html
    assert not re.search(r"(src=|<link|<script|url\(|https?://)", page, re.IGNORECASE)


@pytest.mark.parametrize("name", TEMPLATES)
def test_a_missing_variable_fails_loudly(renderer: Renderer, name: str) -> None:
    context = sample_context(name)
    del context["support_address"]
    with pytest.raises(UndefinedError):
        renderer.render(name, "lv", context)


def test_a_missing_ticket_field_fails_loudly(renderer: Renderer) -> None:
    context = sample_context("estimate_request")
    del context["ticket"]["summary"]
    with pytest.raises(UndefinedError):
        renderer.render("estimate_request", "en", context)


def test_an_unknown_language_is_refused(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="language"):
        renderer.render("ticket_created", "de", sample_context("ticket_created"))


def test_an_unknown_template_name_is_refused(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="template"):
        renderer.render("../../etc/passwd", "en", sample_context("ticket_created"))


@pytest.mark.parametrize("language", LANGUAGES)
def test_template_syntax_in_customer_text_renders_literally_and_fast(renderer: Renderer, language: str) -> None:
    summary = "{{ 7*7 }}"
    loop = "{% for x in range(10**9) %}x{% endfor %}"
    started = time.monotonic()
    for name in TEMPLATES:
        context = sample_context(name, summary=summary, description=loop)
        context["comment"] = loop
        rendered = renderer.render(name, language, context)
        if name in ("ticket_announced", "estimate_request"):
            assert loop in rendered.text and loop in rendered.html
            assert summary in rendered.subject and summary in rendered.text and summary in rendered.html
        assert "49" not in rendered.subject + rendered.text
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("language", LANGUAGES)
def test_markup_in_customer_text_is_escaped_in_html_and_literal_in_text(renderer: Renderer, language: str) -> None:
    attack = '<script>alert("x")</script>'
    rendered = renderer.render("comment", language, {**sample_context("comment"), "comment": attack})
    assert attack in rendered.text
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;" in rendered.html


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_summary_with_line_breaks_cannot_add_a_header(renderer: Renderer, language: str) -> None:
    summary = "Printeris\r\nBcc: x@evil\u2028X-Other: y\x00z"
    rendered = renderer.render("ticket_created", language, sample_context("ticket_created", summary=summary))
    assert not set("\r\n\x00\u2028\u2029") & set(rendered.subject)
    assert "Printeris Bcc: x@evil X-Other: y z" in rendered.subject


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_long_summary_is_capped_in_the_subject(renderer: Renderer, language: str) -> None:
    rendered = renderer.render("status_changed", language, sample_context("status_changed", summary="ā" * 500))
    assert len(rendered.subject) <= 200
    assert rendered.subject.startswith("[SD-12]")


@pytest.mark.parametrize(("language", "accept", "cancel"), [
    ("lv", "APSTIPRINĀT NOVĒRTĒJUMU", "ATCELT PIEPRASĪJUMU"),
    ("en", "ACCEPT THE ESTIMATE", "CANCEL REQUEST"),
])
def test_an_estimate_request_offers_both_answers_as_words_and_reply_links(
        renderer: Renderer, language: str, accept: str, cancel: str) -> None:
    rendered = renderer.render("estimate_request", language, sample_context("estimate_request"))
    for keyword in ("ACCEPT THE ESTIMATE", "CANCEL REQUEST", "APSTIPRINĀT NOVĒRTĒJUMU", "ATCELT PIEPRASĪJUMU"):
        assert keyword in rendered.text
        assert keyword in rendered.html
    assert "3h" in rendered.text and "2026-12-18" in rendered.text
    for part in (rendered.text, rendered.html):
        found = links(part)
        assert {body for _address, _subject, body in found} == {accept, cancel}
        assert {(address, subject) for address, subject, _body in found} == {
            (REPLY_ADDRESS, "Re: [SD-12] Printeris nedrukā")}


def test_the_latvian_estimate_request_asks_in_latvian(renderer: Renderer) -> None:
    rendered = renderer.render("estimate_request", "lv", sample_context("estimate_request"))
    assert "APSTIPRINĀT NOVĒRTĒJUMU" in rendered.text
    assert "novērtējum" in rendered.subject


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_solution_ready_for_deploy_offers_only_reopen(renderer: Renderer, language: str) -> None:
    context = {**sample_context("solution_proposed", status="READY FOR DEPLOY"), "to_status": "READY FOR DEPLOY"}
    rendered = renderer.render("solution_proposed", language, context)
    bodies = {body for _address, _subject, body in links(rendered.html)}
    assert bodies == {LATVIAN_KEYWORDS["REOPEN"] if language == "lv" else "REOPEN"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_solution_waiting_for_the_customer_offers_accept_and_reopen(renderer: Renderer, language: str) -> None:
    rendered = renderer.render("solution_proposed", language, sample_context("solution_proposed"))
    assert len(links(rendered.text)) == 2
    assert "ACCEPT THE SOLUTION" in rendered.text and "APSTIPRINĀT RISINĀJUMU" in rendered.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_internal_comment_says_so(renderer: Renderer, language: str) -> None:
    rendered = renderer.render("comment", language, {**sample_context("comment"), "internal": True})
    assert "INTERNAL" in rendered.subject and "INTERNAL" in rendered.text and "INTERNAL" in rendered.html


@pytest.mark.parametrize(("code", "language"), [(code, language) for code in REFUSAL_CODES for language in LANGUAGES])
def test_every_refusal_reason_is_explained_in_the_recipients_language(
        renderer: Renderer, code: str, language: str) -> None:
    context = sample_context("command_refused")
    context["refusal"] = {**context["refusal"], "reason_code": code}
    rendered = renderer.render("command_refused", language, context)
    assert FALLBACK not in rendered.text and FALLBACK not in rendered.html
    english = renderer.render("command_refused", "en", context).text
    if language == "lv":
        reason = re.search(r"Iemesls: (.+)", rendered.text)
        assert reason is not None and reason.group(1) not in english


def test_an_unknown_refusal_reason_falls_back_to_the_english_text(renderer: Renderer) -> None:
    context = sample_context("command_refused")
    context["refusal"] = {**context["refusal"], "reason_code": "something_new"}
    assert FALLBACK in renderer.render("command_refused", "lv", context).text


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_refusal_lists_the_commands_possible_now_or_says_there_are_none(renderer: Renderer, language: str) -> None:
    context = sample_context("command_refused")
    rendered = renderer.render("command_refused", language, context)
    assert "ATVĒRT NO JAUNA" in rendered.text and "REOPEN" in rendered.text
    assert "Paldies!" in rendered.text
    none_left = renderer.render("command_refused", language, {**context, "possible_commands": []})
    assert "REOPEN" not in none_left.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_unknown_sender_is_told_how_to_get_access(renderer: Renderer, language: str) -> None:
    rendered = renderer.render("unknown_sender", language, sample_context("unknown_sender"))
    assert "Jauns Service Desk lietotājs" in rendered.text
    assert "support@desk.example.lv" in rendered.text
    assert "anna@klients.lv" in rendered.text


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_confirmation_request_links_a_reply_with_the_same_command(renderer: Renderer, language: str) -> None:
    rendered = renderer.render("confirm_request", language, sample_context("confirm_request"))
    assert [body for _address, _subject, body in links(rendered.html)] == ["ACCEPT THE ESTIMATE"]


def test_mailto_encodes_every_reserved_character_in_header_values() -> None:
    url = mailto("support+tok@desk.example.lv", "Re: [SD-1] a&b=c #d?\r\ne", "ĀČĒ & x")
    assert url.startswith("mailto:support+tok@desk.example.lv?subject=")
    query = url.split("?", 1)[1]
    assert query.count("&") == 1 and query.count("=") == 2 and "#" not in query and " " not in query
    fields = parse_qs(query)
    assert fields["subject"] == ["Re: [SD-1] a&b=c #d? e"]
    assert fields["body"] == ["ĀČĒ & x"]


def test_the_default_templates_dir_is_the_repositorys(tmp_path: Path) -> None:
    assert default_templates_dir() == Path(__file__).resolve().parent.parent / "templates"


@pytest.mark.parametrize("language", LANGUAGES)
def test_each_mail_lists_its_own_commands_though_command_lists_are_remembered(renderer: Renderer,
                                                                               language: str) -> None:
    first = renderer.render("comment", language, {**sample_context("comment"), "possible_commands": ["REOPEN"]})
    second = renderer.render("comment", language, {**sample_context("comment"), "possible_commands": ["CANCEL REQUEST"]})
    again = renderer.render("comment", language, {**sample_context("comment"), "possible_commands": ["REOPEN"]})
    assert "REOPEN" in first.text and "CANCEL REQUEST" not in first.text
    assert "CANCEL REQUEST" in second.text and "REOPEN" not in second.text
    assert again == first


def test_a_remembered_macro_output_never_stands_in_for_a_differently_escaped_argument(tmp_path: Path) -> None:
    from markupsafe import Markup

    (tmp_path / "en").mkdir()
    (tmp_path / "_show.html.j2").write_text("{% macro show(value) %}[{{ value }}]{% endmacro %}")
    (tmp_path / "en" / "page.html.j2").write_text('{% import "_show.html.j2" as m %}{{ m.show(value) }}')
    environment = Renderer(tmp_path)._html
    page = environment.get_template("en/page.html.j2")
    assert page.render(value="<b>") == "[&lt;b&gt;]"
    assert page.render(value=Markup("<b>")) == "[<b>]"  # equal to "<b>" as a key, not as HTML
    assert page.render(value="<b>") == "[&lt;b&gt;]"
    assert page.render(value=["<i>"]) == "[[&#39;&lt;i&gt;&#39;]]"


def test_load_all_compiles_every_template_so_rendering_reads_no_template_file(tmp_path: Path) -> None:
    renderer = Renderer(default_templates_dir())
    files = list(default_templates_dir().rglob("*.j2"))
    assert renderer.load_all() == len(files) + sum(1 for path in files if path.name == "_words.j2")

    def no_file(*_args: Any) -> Any:
        raise AssertionError("a template was read after load_all")
    for environment in (renderer._text, renderer._html):
        environment.loader.get_source = no_file  # type: ignore[method-assign, union-attr]
    for name in TEMPLATES:
        for language in LANGUAGES:
            assert renderer.render(name, language, sample_context(name)).text


def test_a_dict_key_is_read_before_a_method_of_the_same_name_and_a_missing_key_still_fails(tmp_path: Path) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "page.txt.j2").write_text("{{ row.items }}|{{ row.key }}|{{ text.upper }}")
    page = Renderer(tmp_path)._text.get_template("en/page.txt.j2")
    assert page.render(row={"items": "three", "key": "SD-1"}, text="x").startswith("three|SD-1|<built-in method upper")
    with pytest.raises(UndefinedError):
        page.render(row={"items": "three"}, text="x")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("name", ["ticket_announced", "comment", "estimate_request"])
def test_quoted_text_is_indented_and_no_line_ends_in_white_space(renderer: Renderer, name: str, language: str) -> None:
    """Blank lines of what the customer wrote stay blank: quoted-printable would carry each
    space a blank or trailing one kept as "=20"."""
    written = "Labdien!\n   \nPrinteris  \t\nnedrukā.\n\nAnna"
    context = sample_context(name, description=written)
    context["comment"] = written
    text = renderer.render(name, language, context).text
    assert "    Labdien!\n\n    Printeris\n    nedrukā.\n\n    Anna" in text
    assert [line for line in text.splitlines() if line != line.rstrip()] == []


# Templates compiled by `make setup` ------------------------------------------------------------


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A copy of the release's templates, nothing compiled yet."""
    copy = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), copy, ignore=shutil.ignore_patterns(".compiled"))
    return copy


def test_templates_compiled_at_setup_are_used_and_nothing_is_compiled_at_start(
        release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = compile_release(release)
    assert compiled == len(list(release.rglob("*.j2"))) + 2  # the shared words: once for text, once for HTML
    monkeypatch.setattr(Environment, "compile", lambda *args, **kwargs: pytest.fail("a template was compiled"))
    data_cache = tmp_path / "var" / "cache"
    renderer = Renderer(release, data_cache)
    assert renderer.load_all() == compiled
    assert renderer.render("ticket_created", "lv", sample_context("ticket_created")).subject.startswith("[SD-12]")
    assert [path for path in data_cache.rglob("*") if path.is_file()] == []  # nothing written at run time


def test_a_template_changed_after_setup_is_compiled_again(release: Path, tmp_path: Path) -> None:
    compile_release(release)
    subject = release / "en" / "ticket_created.subject.j2"
    subject.write_text(subject.read_text(encoding="utf-8").replace("[", "CHANGED ["), encoding="utf-8")
    rendered = Renderer(release, tmp_path / "cache").render("ticket_created", "en", sample_context("ticket_created"))
    assert rendered.subject.startswith("CHANGED [SD-12]")
    assert [path for path in (tmp_path / "cache").rglob("*") if path.is_file()] != []  # kept for the next process
