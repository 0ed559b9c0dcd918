"""Reply tokens: round trips, 1,000 tampered tokens refused (B5), fuzzing (E9)."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import random
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.core import tokens
from maildesk.core.tokens import (
    TokenClaims, make_token, message_id_with_token, reply_address, token_from_address, token_from_message_id,
    verify_token,
)

SECRET = b"test-secret-0123456789abcdef0123456789"
ALICE = "alice@customer.example"
SUPPORT = "support@desk.example"


def token(ticket: str = "SD-123", recipient: str = ALICE, purpose: str = "reply", version: int = 0) -> str:
    return make_token(SECRET, ticket=ticket, recipient=recipient, purpose=purpose, version=version)


@pytest.mark.parametrize("purpose, version", [("reply", 0), ("estimate", 0), ("estimate", 7), ("confirm", 0),
                                              ("estimate", 999_999)])
def test_a_token_verifies_for_its_recipient_with_its_claims(purpose: str, version: int) -> None:
    made = token(purpose=purpose, version=version)
    assert verify_token(SECRET, made, recipient=ALICE) == TokenClaims("SD-123", purpose, version)


def test_a_token_is_short_lower_case_and_readable() -> None:
    made = token(purpose="estimate", version=2)
    assert re.fullmatch(r"sd-123\.e2\.[a-z2-7]{24}", made)
    assert len(reply_address(SUPPORT, made).partition("@")[0]) <= 64


def test_the_same_inputs_give_the_same_token_and_the_recipient_case_does_not_matter() -> None:
    assert token() == token()
    assert token(recipient="Alice@Customer.Example") == token()
    assert verify_token(SECRET, token(), recipient=" ALICE@customer.example ") is not None


def test_a_plain_ticket_number_works_too() -> None:
    assert verify_token(SECRET, token(ticket="42"), recipient=ALICE) == TokenClaims("42", "reply", 0)


def test_a_forwarded_token_does_not_verify_for_the_colleague() -> None:
    assert verify_token(SECRET, token(), recipient="bob@customer.example") is None


def test_a_token_from_another_secret_is_refused() -> None:
    assert verify_token(b"another secret", token(), recipient=ALICE) is None
    assert verify_token(b"", token(), recipient=ALICE) is None


def test_an_approval_of_an_old_estimate_version_does_not_claim_the_new_one() -> None:
    old = token(purpose="estimate", version=1)
    claims = verify_token(SECRET, old, recipient=ALICE)
    assert claims == TokenClaims("SD-123", "estimate", 1)
    forged = old.replace(".e1.", ".e2.")
    assert verify_token(SECRET, forged, recipient=ALICE) is None


@pytest.mark.parametrize("kwargs", [
    {"purpose": "approve"}, {"version": -1}, {"version": 1_000_000}, {"ticket": "SD 1"}, {"ticket": ""},
    {"ticket": "sd-1.r0"}, {"recipient": "not-an-address"},
])
def test_bad_inputs_to_make_token_are_refused(kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"ticket": "SD-1", "recipient": ALICE, "purpose": "reply", "version": 0} | kwargs
    with pytest.raises(ValueError):
        make_token(SECRET, **arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_token(b"", ticket="SD-1", recipient=ALICE, purpose="reply")


def test_the_reply_address_round_trips() -> None:
    made = token()
    address = reply_address(SUPPORT, made)
    assert address == f"support+{made}@desk.example"
    assert token_from_address(address, SUPPORT) == made
    assert token_from_address(f"<{address.upper()}>", SUPPORT) == made
    assert token_from_address(reply_address(SUPPORT, made, "-"), SUPPORT, "-") == made


@pytest.mark.parametrize("address", [
    SUPPORT, "support+@desk.example", "support+garbage@desk.example", "other+{t}@desk.example",
    "support+{t}@evil.example", "support+{t}@desk.example.evil", "xsupport+{t}@desk.example",
    "support-{t}@desk.example",
    "support+{t}x@desk.example", "", "@", "support+{t}",
])
def test_addresses_without_a_well_formed_token_give_none(address: str) -> None:
    assert token_from_address(address.format(t=token()), SUPPORT) is None


def test_reply_address_refuses_what_would_not_be_a_valid_address() -> None:
    with pytest.raises(ValueError):
        reply_address(SUPPORT, "not a token")
    with pytest.raises(ValueError):
        reply_address("no-at-sign", token())
    with pytest.raises(ValueError):
        reply_address(SUPPORT, token(), separator="@")
    with pytest.raises(ValueError):
        reply_address("a-very-long-support-mailbox-name-that-does-not-fit@desk.example",
                      token(ticket="ABCDEFGHIJ-999999999999"))


def test_the_token_rides_in_the_message_id_too() -> None:
    made = token()
    message_id = message_id_with_token(made, "desk.example", "a1b2c3")
    assert message_id == f"<{made}.a1b2c3@desk.example>"
    assert token_from_message_id(message_id, "desk.example") == made
    assert token_from_message_id(message_id, "evil.example") is None
    assert token_from_message_id("<abc@desk.example>", "desk.example") is None
    assert token_from_message_id(f"<{made}@desk.example>", "desk.example") is None


def _tampered(rng: random.Random, good: str) -> str:
    """One of the B5 mutations of Alice's token for SD-123 (possibly equal to it by chance)."""
    kind = rng.randrange(8)
    head, _, mac = good.rpartition(".")
    if kind == 0:
        position = rng.randrange(len(good))
        replacement = rng.choice("abcdefghijklmnopqrstuvwxyz234567.-0189")
        return good[:position] + replacement + good[position + 1:]
    if kind == 1:
        position = rng.randrange(len(good))
        return good[:position] + good[position:].upper() if rng.random() < 0.5 else good.swapcase()
    if kind == 2:
        return good[:rng.randrange(len(good))]
    if kind == 3:
        return good + rng.choice(["a", "2", ".", "=", "==="])
    if kind == 4:
        return good.replace("sd-123", rng.choice(["sd-124", "sd-12", "sd-1230", "xx-123", "123", "sd-0123"]))
    if kind == 5:
        return token(recipient=f"user{rng.randrange(10**6)}@customer.example")
    if kind == 6:
        return f"{head.rpartition('.')[0]}.{rng.choice('rec')}{rng.randrange(1, 50)}.{mac}"
    raw = bytearray(mac.encode("ascii"))
    raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(5)
    return f"{head}.{raw.decode('latin-1')}"


def test_a_thousand_tampered_tokens_are_all_refused() -> None:
    """B5: bit flips, case changes, truncation, other ticket, other recipient, other version."""
    rng = random.Random(20260426)
    good = token()
    candidates = [candidate for candidate in (_tampered(rng, good) for _ in range(1100)) if candidate != good][:1000]
    assert len(candidates) == 1000
    assert [candidate for candidate in candidates if verify_token(SECRET, candidate, recipient=ALICE)] == []


def test_an_old_estimate_token_reports_its_own_version_so_the_caller_can_refuse_it() -> None:
    """B5 "estimate v1 after v2 exists": the claim says v1; the pipeline compares it with the current estimate."""
    claims = verify_token(SECRET, token(purpose="estimate", version=1), recipient=ALICE)
    assert claims is not None and claims.version == 1


def test_a_token_for_another_ticket_claims_that_ticket_only() -> None:
    other = token(ticket="SD-124")
    assert verify_token(SECRET, other, recipient=ALICE) == TokenClaims("SD-124", "reply", 0)
    assert verify_token(SECRET, other.replace("sd-124", "sd-123"), recipient=ALICE) is None


def test_the_mac_is_compared_in_constant_time() -> None:
    """B5 static check: the MAC comparison is `hmac.compare_digest`, never `==`."""
    tree = ast.parse(Path(tokens.__file__).read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "compare_digest"]
    assert calls
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            names = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}
            assert not names & {"expected", "mac", "digest"}, ast.unparse(node)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=120), st.text(max_size=60))
def test_fuzzing_the_token_parsers_raises_nothing(text: str, recipient: str) -> None:
    """E9: random text into every parser, no exception, nothing verifies."""
    assert verify_token(SECRET, text, recipient=recipient) is None
    token_from_address(text, SUPPORT)
    token_from_address(text, recipient, recipient[:1])
    token_from_message_id(text, recipient)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[a-z0-9]{1,12}(-[0-9]{1,12})?", fullmatch=True),
       st.sampled_from(["reply", "estimate", "confirm"]), st.integers(0, 999_999),
       st.from_regex(r"[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\.[a-z]{2,6}", fullmatch=True))
def test_every_token_round_trips_through_its_address(ticket: str, purpose: str, version: int, recipient: str) -> None:
    made = make_token(SECRET, ticket=ticket, recipient=recipient, purpose=purpose, version=version)
    assert token_from_address(f"support+{made}@desk.example", SUPPORT) == made
    assert verify_token(SECRET, made, recipient=recipient) == TokenClaims(ticket.upper(), purpose, version)


def test_tokens_already_sent_keep_verifying() -> None:
    """Tokens as earlier versions issued them: a changed MAC computation would void every
    reply to a notification still in a customer's mailbox."""
    assert make_token(b"correct horse battery staple", ticket="SD-123", recipient="Anna@Example.LV",
                      purpose="estimate", version=2) == "sd-123.e2.dzjes3bjeqlgwozzt3z33oe2"
    assert make_token("ключ-šķ".encode(), ticket="42", recipient="jānis@piemērs.lv",
                      purpose="reply") == "42.r0.kcdnt3fzx3jdkkash4plrap5"


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=80), st.sampled_from(["sd-1.r0", "x-9.e12", "7.c0"]), st.emails())
def test_the_mac_is_the_documented_hmac_of_the_derived_key(secret: bytes, head: str, recipient: str) -> None:
    """HMAC-SHA256 under HMAC(secret, label), over head NUL recipient, 15 bytes, lower-case base32."""
    key = hmac.new(secret, tokens.KEY_LABEL, hashlib.sha256).digest()
    digest = hmac.new(key, f"{head}\x00{recipient}".encode(), hashlib.sha256).digest()[:15]
    assert tokens._mac(secret, head, recipient) == base64.b32encode(digest).decode().lower()
