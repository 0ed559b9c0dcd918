"""Strict From parsing: the address-parser confusions of B6 are never trusted."""

from __future__ import annotations

from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.core.identity import Identity, sender_identity

ALICE = "alice@customer.example"


@pytest.mark.parametrize("value, address", [
    ("alice@customer.example", ALICE),
    ("<alice@customer.example>", ALICE),
    ("Alice@Customer.Example", ALICE),
    ("Alice Bērziņa <alice@customer.example>", ALICE),
    ('"Bērziņa, Alice" <alice@customer.example>', ALICE),
    ('"Alice \\"Al\\" B." <alice@customer.example>', ALICE),
    ("John Q. Public <john.q.public@mail.customer.example>", "john.q.public@mail.customer.example"),
    ('"alice@customer.example" <alice@customer.example>', ALICE),
    ("alice@customer.example <alice@customer.example>", ALICE),
    ("=?utf-8?b?QWxpY2UgQsSTcnppxYZh?= <alice@customer.example>", ALICE),
    ("=?x-unknown?q?Alice?= <alice@customer.example>", ALICE),
    ("Alice\r\n <alice@customer.example>", ALICE),
    ("Bērziņa, Alice <alice@customer.example>", ALICE),
    ("Alice (Sales) <alice@customer.example>", ALICE),
    ("anna+billing@xn--kekava-x6a.lv", "anna+billing@xn--kekava-x6a.lv"),
    ("o'brien@customer.example", "o'brien@customer.example"),
])
def test_ordinary_from_headers_are_trusted(value: str, address: str) -> None:
    assert sender_identity([value]) == Identity(address, True, "ok")


@pytest.mark.parametrize("values, address, reason", [
    # CVE-2023-27043: getaddresses on 3.11.7 returns alice, '' and attacker
    (["alice@customer.example)<attacker@evil.example>"], "attacker@evil.example", "display name shows another"),
    (["alice@customer.example]<attacker@evil.example>"], "attacker@evil.example", "display name shows another"),
    (['"alice@customer.example" <attacker@evil.example>'], "attacker@evil.example", "display name shows another"),
    (['"Alice <alice@customer.example>" <attacker@evil.example>'], "attacker@evil.example",
     "display name shows another"),
    (['"alice＠customer.example" <attacker@evil.example>'], "attacker@evil.example", "display name shows another"),
    (["=?utf-8?q?alice=40customer.example?= <attacker@evil.example>"], "attacker@evil.example",
     "display name shows another"),
    (['"=?utf-8?b?YWxpY2VAY3VzdG9tZXIuZXhhbXBsZQ==?=" <attacker@evil.example>'], "attacker@evil.example",
     "display name shows another"),
    (["Alice (alice@customer.example) <attacker@evil.example>"], "attacker@evil.example",
     "display name shows another"),
    (['"Alice @ Home" <alice@customer.example>'], ALICE, "display name shows another"),
    (['"alice@customer.example.evil.example" <alice@customer.example>'], ALICE, "display name shows another"),
    (['"a@b.c"@evil.example'], None, "quoted local part"),
    (['"alice@customer.example"@evil.example'], None, "quoted local part"),
    (["alice@customer.example@evil.example"], None, "several @"),
    (["alice@customer.example (Alice)"], None, "comment"),
    (["(comment) alice@customer.example"], None, "comment"),
    (["alice@customer.example, attacker@evil.example"], None, "several addresses"),
    (["Alice <alice@customer.example>, Eve <attacker@evil.example>"], None, "several addresses"),
    (["<alice@customer.example> <attacker@evil.example>"], None, "several addresses"),
    (["Friends: alice@customer.example, attacker@evil.example;"], None, "several addresses"),
    (["Friends: alice@customer.example;"], None, "group syntax"),
    (["alice@customer.example", "attacker@evil.example"], None, "several From headers"),
    (["alice@customer.example", "alice@customer.example"], None, "several From headers"),
    ([], None, "no From header"),
    ([""], None, "empty From header"),
    (["<>"], None, "empty address"),
    (["alice@[192.0.2.1]"], None, "domain literal"),
    (["alice@localhost"], None, "invalid address"),
    (["alice@сustomer.example"], None, "non-ASCII"),  # Cyrillic с: an IDN homograph
    (["ālice@customer.example"], None, "non-ASCII"),
    (["Alice <ālice@customer.example>"], None, "non-ASCII"),
    (["alice@customer.example\x00"], None, "control character"),
    (["alice@customer.example\nBcc: x@evil.example"], None, "control character"),
    (["alice@customer.example\u2028"], None, "control character"),
    (["a" * 65 + "@customer.example"], None, "too long"),
    (["Alice <alice@customer.example"], None, "unparseable"),
    (["Alice alice@customer.example"], None, "invalid address"),
    (["x" * 1000 + " <alice@customer.example>"], None, "too long"),
])
def test_the_confusions_are_never_trusted(values: list[str], address: str | None, reason: str) -> None:
    """B6: the address-parser confusions -> 0 trusted identities, each with a reason."""
    identity = sender_identity(values)
    assert identity.trusted is False
    assert identity.address == address
    assert reason in identity.reason


def test_the_cve_case_is_one_that_getaddresses_gets_wrong_on_this_python() -> None:
    """Why we parse ourselves: on unpatched Pythons getaddresses yields more than one address."""
    value = "alice@customer.example)<attacker@evil.example>"
    found = [address for _, address in getaddresses([value]) if address]
    assert found != ["attacker@evil.example"] or sender_identity([value]).trusted is False
    assert sender_identity([value]).trusted is False


_ATOM = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}[a-z0-9]", fullmatch=True).filter(lambda text: ".." not in text)
_DOMAIN = st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}\.[a-z]{2,6}", fullmatch=True)
_NAME = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters='"\\<>@＠﹫'),
                max_size=30)


@settings(max_examples=500, deadline=None)
@given(_ATOM, _DOMAIN, _NAME)
def test_generated_ordinary_headers_are_trusted_with_the_right_address(local: str, domain: str, name: str) -> None:
    address = f"{local}@{domain}"
    quoted = f'"{name}" <{address}>'
    assert sender_identity([quoted]) == Identity(address, True, "ok")
    assert sender_identity([address]) == Identity(address, True, "ok")


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=3))
def test_fuzzing_raises_nothing_and_trust_means_one_plain_address(values: list[str]) -> None:
    """E9: random From headers never raise; a trusted answer is one address found in the input."""
    identity = sender_identity(values)
    if identity.trusted:
        assert len(values) == 1
        assert identity.address is not None and identity.address.isascii()
        assert identity.address.count("@") == 1
        assert identity.address in values[0].lower()


@settings(max_examples=1000, deadline=None)
@given(_NAME, _ATOM, _DOMAIN, _ATOM, _DOMAIN)
def test_a_second_address_anywhere_in_the_name_is_never_trusted(prefix: str, local: str, domain: str,
                                                                 other_local: str, other_domain: str) -> None:
    shown, real = f"{local}@{domain}", f"{other_local}@{other_domain}"
    if shown == real:
        return
    for value in (f'"{prefix} {shown}" <{real}>', f"{shown})<{real}>", f"{shown} <{real}>",
                  f'"{shown}"@{other_domain}', f"{shown}, {real}", f"{prefix} <{shown}> <{real}>"):
        assert sender_identity([value]).trusted is False, value
