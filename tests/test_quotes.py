"""maildesk.quotes: only what the sender wrote counts, so a quoted command must never fire."""

from __future__ import annotations

import time

import pytest

from maildesk.quotes import LANGUAGES, _ReplyMessage, new_text

NOTIFICATION = (
    "Labdien!\n\nPieteikums SD-12 ir atrisināts.\nJa risinājums der, atbildiet ar:\n"
    "ACCEPT THE SOLUTION\n\nService Desk"
)


def quoted(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines())


# How each client quotes the notification below the customer's new text.
CLIENT_QUOTES: dict[str, str] = {
    "gmail_en": "On Thu, 26 Nov 2026 at 10:00, Service Desk <support@desk.example> wrote:\n\n"
                + quoted(NOTIFICATION),
    "gmail_en_wrapped": "On Thu, 26 Nov 2026 at 10:00, Service Desk <\nsupport@desk.example> wrote:\n\n"
                        + quoted(NOTIFICATION),
    "gmail_lv": "2026. gada 26. nov., plkst. 10:00 — Service Desk <support@desk.example> rakstīja:\n\n"
                + quoted(NOTIFICATION),
    "gmail_lv_weekday": "pirmd., 2026. g. 26. nov., plkst. 10:00 Service Desk <\nsupport@desk.example> "
                        "rakstīja:\n\n" + quoted(NOTIFICATION),
    "outlook_en": "________________________________\nFrom: Service Desk <support@desk.example>\n"
                  "Sent: Thursday, November 26, 2026 10:00 AM\nTo: Anna Bērziņa <anna@klients.lv>\n"
                  "Subject: [SD-12] Atrisināts\n\n" + NOTIFICATION,
    "outlook_en_bold": "*From:* Service Desk <support@desk.example>\n*Sent:* Thursday, November 26, 2026\n"
                       "*To:* Anna\n*Subject:* [SD-12] Atrisināts\n\n" + NOTIFICATION,
    "outlook_lv": "No: Service Desk <support@desk.example>\nNosūtīts: ceturtdiena, 2026. gada 26. novembris "
                  "10:00\nKam: Anna Bērziņa <anna@klients.lv>\nKopija: Ilze <ilze@klients.lv>\n"
                  "Tēma: [SD-12] Atrisināts\n\n" + NOTIFICATION,
    "outlook_original_message": "-----Original Message-----\nFrom: Service Desk\nSent: Thursday\n\n"
                                + NOTIFICATION,
    "outlook_original_message_lv": "-----Oriģinālā ziņa-----\nNo: Service Desk\nNosūtīts: ceturtdiena\n\n"
                                   + NOTIFICATION,
    "apple_mail": "> On 26 Nov 2026, at 10:00, Service Desk <support@desk.example> wrote:\n>\n"
                  + quoted(NOTIFICATION),
    "apple_mail_unquoted_attribution": "On 26 Nov 2026, at 10:00, Service Desk <support@desk.example> wrote:\n\n"
                                       + quoted(NOTIFICATION),
    "thunderbird": "26.11.2026 10:00, Service Desk wrote:\n" + quoted(NOTIFICATION),
    "iphone": "Sent from my iPhone\n\nOn 26 Nov 2026, at 10:00, Service Desk <support@desk.example> wrote:\n\n"
              + quoted(NOTIFICATION),
    "iphone_lv": "Nosūtīts no mana iPhone\n\n" + NOTIFICATION,
    "plain_quote": quoted(NOTIFICATION),
    "gmail_forward": "---------- Forwarded message ---------\nFrom: Service Desk <support@desk.example>\n"
                     "Date: Thu, 26 Nov 2026 at 10:00\nSubject: [SD-12] Atrisināts\n\n" + NOTIFICATION,
    "apple_forward": "Begin forwarded message:\n\nFrom: Service Desk <support@desk.example>\n"
                     "Subject: [SD-12] Atrisināts\n\n" + NOTIFICATION,
    "signature_then_unmarked_quote": "-- \nAnna Bērziņa\nKlients SIA\n\n" + NOTIFICATION,
}


@pytest.mark.parametrize("client", sorted(CLIENT_QUOTES))
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_thank_you_above_a_quoted_notification_is_all_the_new_text(client: str, newline: str) -> None:
    text = ("Paldies\n\n" + CLIENT_QUOTES[client]).replace("\n", newline)
    result = new_text(text)
    assert result == "Paldies"
    assert "ACCEPT" not in result


@pytest.mark.parametrize("client", sorted(CLIENT_QUOTES))
def test_a_command_on_the_first_line_above_a_quote_is_kept(client: str) -> None:
    result = new_text("ACCEPT THE ESTIMATE\n\n" + CLIENT_QUOTES[client])
    assert result == "ACCEPT THE ESTIMATE"


@pytest.mark.parametrize("client", sorted(CLIENT_QUOTES))
def test_a_mail_that_is_only_a_quote_has_no_new_text(client: str) -> None:
    assert new_text(CLIENT_QUOTES[client]) == ""


@pytest.mark.parametrize("client", ["gmail_en", "outlook_lv", "plain_quote", "thunderbird"])
def test_bullet_lists_and_several_paragraphs_of_new_text_are_kept_whole(client: str) -> None:
    written = ("ACCEPT THE ESTIMATE\n\nLūdzu, ņemiet vērā:\n- pirmais punkts\n- otrais punkts\n\n"
               "Trešā rindkopa ar divām\nrindiņām.")
    assert new_text(written + "\n\n" + CLIENT_QUOTES[client]) == written


@pytest.mark.parametrize(("written", "expected"), [
    ("Paldies\n\nAr cieņu,\nAnna Bērziņa\nKlients SIA", "Paldies"),
    ("Paldies\n\nBest regards,\nAnna", "Paldies"),
    ("Paldies\n-- \nAnna Bērziņa", "Paldies"),
    ("Paldies\n\nSent from my iPhone", "Paldies"),
    ("Paldies\n\nNosūtīts no mana iPhone", "Paldies"),
])
def test_signatures_are_removed(written: str, expected: str) -> None:
    assert new_text(written) == expected


def test_an_answer_written_below_the_quote_is_kept() -> None:
    text = ("On Thu, 26 Nov 2026 at 10:00, Service Desk <support@desk.example> wrote:\n"
            + quoted(NOTIFICATION) + "\n\nACCEPT THE ESTIMATE\n-- \nAnna")
    assert new_text(text) == "ACCEPT THE ESTIMATE"


def test_inline_answers_between_quoted_lines_are_kept_and_the_quotes_dropped() -> None:
    text = "> Vai der?\nJā, der.\n> ACCEPT THE SOLUTION\nPaldies"
    assert new_text(text) == "Jā, der.\nPaldies"


@pytest.mark.parametrize("text", [
    "Labdien!\nWarning: mail server says the mailbox is full.\nLūdzu palīdziet.",
    "Printeris nestrādā. Caution: the e-mail printer is hot.\nPaldies",
])
def test_a_customers_warning_about_mail_is_not_taken_for_a_disclaimer(text: str) -> None:
    assert new_text(text) == text


def test_text_without_quotes_is_kept_as_written() -> None:
    text = "Labdien!\n\nPrinteris 3. stāvā nedrukā.\nKļūda: E-42\n\nAnna"
    assert new_text(text) == text


@pytest.mark.parametrize(("client", "field"), [
    ("outlook_lv", "Nosūtīts:"), ("outlook_en", "Sent:"), ("outlook_en_bold", "*Sent:*"),
    ("gmail_lv", "rakstīja:"), ("gmail_lv_weekday", "rakstīja:"), ("gmail_en", "wrote:"),
])
def test_mail_parser_reply_with_our_profiles_splits_each_quote_header_on_its_own(client: str, field: str) -> None:
    """The library pass alone, without our line rules, as defence in depth."""
    text = "Paldies\n\n" + CLIENT_QUOTES[client]
    message = _ReplyMessage(text=text, languages=list(LANGUAGES), keep_hyphen_lists=True).read()
    assert message.replies[0].body == "Paldies"
    assert field in message.replies[1].headers


@pytest.mark.parametrize("text", [
    "On " + "a" * 50_000,
    ("On " + "a b " * 500 + "\n") * 100,
    "1 " + "x" * 50_000 + " rakstīja",
])
def test_pathological_long_lines_are_handled_quickly(text: str) -> None:
    started = time.perf_counter()
    result = new_text(text)
    assert time.perf_counter() - started < 2
    assert "".join(result.split()) == "".join(text.split())
