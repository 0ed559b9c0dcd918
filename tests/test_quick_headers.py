"""The header guesses read from raw bytes before parsing (`process.quick_sender`, `quick_message_id`).

`quick_sender` only warms the user cache, but its short cut for `Name <address>` and bare
addresses must give what the stdlib's `getaddresses` gives wherever it applies.
"""

from __future__ import annotations

from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk import process
from maildesk.process import quick_message_id, quick_sender

_NAMES = st.lists(st.sampled_from(list("Anna Bērziņa.-'?=_!#$%&*+/^`{|}~\t") + ["=?utf-8?q?B=C4=93rzi=C5=86a?="]),
                  max_size=30).map("".join)
_LOCAL = st.text(st.sampled_from(list("anna.bērziņa+tag-_0!#$%&'*/=?^`{|}~")), min_size=1, max_size=20)
_DOMAIN = st.text(st.sampled_from(list("klients.lv-0ā")), min_size=1, max_size=20)


def _from(value: str) -> bytes:
    return f"Received: x\r\nFrom: {value}\r\nTo: s@desk.example\r\n\r\nbody\r\n".encode("utf-8")


def _by_the_stdlib(raw: bytes) -> str:
    value = process._quick_header(raw, b"from:")
    return getaddresses([value])[0][1].lower()


@settings(max_examples=600, deadline=None)
@given(name=_NAMES, local=_LOCAL, domain=_DOMAIN, form=st.sampled_from(["{n} <{a}>", "{a}", "<{a}>", "{n}<{a}>", '"{n}" <{a}>']))
def test_the_short_cut_agrees_with_the_stdlib_where_it_applies(name: str, local: str, domain: str, form: str) -> None:
    raw = _from(form.format(n=name, a=f"{local}@{domain}"))
    value = process._quick_header(raw, b"from:")
    if "(" in value or process._PLAIN_FROM.fullmatch(value) is None:
        return
    assert quick_sender(raw) == _by_the_stdlib(raw)


@pytest.mark.parametrize("value, expected", [
    ("Anna Bērziņa <Anna@Klients.LV>", "anna@klients.lv"),
    ("anna@klients.lv", "anna@klients.lv"),
    ('"Bērziņa, Anna" <anna@klients.lv>', "anna@klients.lv"),  # quoted: the stdlib reads it
    ("=?utf-8?q?B=C4=93rzi=C5=86a?= <anna@klients.lv>", "anna@klients.lv"),
    ("Anna (support) <anna@klients.lv>", ""),  # comments are left to the parser
    ("", ""),
])
def test_the_sender_guess(value: str, expected: str) -> None:
    assert quick_sender(_from(value)) == expected


def test_the_message_id_is_read_from_the_header_only() -> None:
    raw = b"Message-ID: <a@b>\r\nSubject: x\r\n\r\nMessage-ID: <body@b>\r\n"
    assert quick_message_id(raw) == "<a@b>"
    assert quick_message_id(b"Subject: x\r\n\r\nMessage-ID: <body@b>\r\n") == ""
