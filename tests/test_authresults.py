"""Trusted Authentication-Results: the topmost header with our authserv-id decides (B4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maildesk.authresults import Verification, verified_domain

TRUSTED = {"mx.desk.test"}
CUSTOMER = "customer.example"
FORGED_PASS = "mx.desk.test; dmarc=pass header.from=customer.example; dkim=pass header.d=customer.example"


@pytest.mark.parametrize("headers, method", [
    (["mx.desk.test; dmarc=pass header.from=customer.example"], "dmarc"),
    (["mx.desk.test 1; dkim=pass (2048-bit key) header.d=customer.example header.i=@customer.example; "
      "spf=pass smtp.mailfrom=anna@customer.example; dmarc=pass (p=reject) header.from=customer.example"], "dmarc"),
    (["MX.DESK.TEST; DMARC=Pass header.from=Customer.Example"], "dmarc"),
    (["mx.desk.test; dkim=pass header.d=customer.example; spf=fail smtp.mailfrom=x@elsewhere.example"], "dkim"),
    (['mx.desk.test; dkim=pass header.d="customer.example"'], "dkim"),
    (["mx.desk.test; spf=pass smtp.mailfrom=bounces@customer.example"], "spf"),
    (["mx.desk.test; spf=pass smtp.mailfrom=customer.example"], "spf"),
    (["mx.desk.test; dkim=pass header.d=customer.example; dmarc=none header.from=customer.example"], "dkim"),
    (["imap.internal; dkim=fail header.d=evil.example", "mx.desk.test; dmarc=pass header.from=customer.example"],
     "dmarc"),
    (["mx.desk.test; dmarc=pass header.from=customer.example", "mx.desk.test; dmarc=fail header.from=customer.example"],
     "dmarc"),
])
def test_a_genuine_pass_from_our_mta_verifies_the_from_domain(headers: list[str], method: str) -> None:
    result = verified_domain(headers, TRUSTED, CUSTOMER)
    assert (result.verified, result.method) == (True, method), result.reason
    assert result.header == next(value for value in headers if value.lower().startswith("mx.desk.test"))


def test_a_signature_of_the_parent_domain_is_aligned_for_a_sub_domain_sender() -> None:
    result = verified_domain(["mx.desk.test; dkim=pass header.d=customer.example"], TRUSTED, "mail.customer.example")
    assert result.verified


def test_several_trusted_ids_may_be_configured() -> None:
    result = verified_domain(["mx2.desk.test; dmarc=pass header.from=customer.example"],
                             {"mx1.desk.test", "MX2.desk.test "}, CUSTOMER)
    assert result.verified


FORGED: list[tuple[str, list[str]]] = [
    ("no Authentication-Results at all", []),
    ("only another authserv-id", ["mx.evil.example; dmarc=pass header.from=customer.example"]),
    ("forged pass below our dmarc=fail", ["mx.desk.test; dmarc=fail header.from=customer.example", FORGED_PASS]),
    ("forged pass below our none", ["mx.desk.test; none", FORGED_PASS]),
    ("forged pass below our spf=softfail", ["mx.desk.test; spf=softfail smtp.mailfrom=x@customer.example",
                                            FORGED_PASS]),
    ("look-alike id with our id as prefix", ["mx.desk.test.evil.example; dmarc=pass header.from=customer.example"]),
    ("look-alike id, one letter short", ["mx.desk.tes; dmarc=pass header.from=customer.example"]),
    ("look-alike id, one letter more", ["xmx.desk.test; dmarc=pass header.from=customer.example"]),
    ("our id only in a leading comment", ["(mx.desk.test) mx.evil.example; dmarc=pass header.from=customer.example"]),
    ("our id only in a trailing comment", ["mx.evil.example; dmarc=pass header.from=customer.example (mx.desk.test)"]),
    ("malformed header with our id on top", ["mx.desk.test dmarc=pass header.from=customer.example; x",
                                             FORGED_PASS]),
    ("our header cut short on top", ["mx.desk.test; dmarc=", FORGED_PASS]),
    ("dmarc pass for another From domain", ["mx.desk.test; dmarc=pass header.from=evil.example"]),
    ("dmarc pass for a longer look-alike domain",
     ["mx.desk.test; dmarc=pass header.from=customer.example.evil.example"]),
    ("dmarc pass without header.from", ["mx.desk.test; dmarc=pass"]),
    ("dkim pass for the attacker's domain with our user's i=", ["mx.desk.test; dkim=pass header.d=evil.example "
                                                               "header.i=@customer.example"]),
    ("dkim pass for a sub-domain the attacker may control", ["mx.desk.test; dkim=pass header.d=evil.customer.example"]),
    ("dkim pass for a top-level domain", ["mx.desk.test; dkim=pass header.d=example"]),
    ("dkim pass with two header.d values", ["mx.desk.test; dkim=pass header.d=evil.example header.d=customer.example"]),
    ("spf pass for the HELO name only", ["mx.desk.test; spf=pass smtp.helo=customer.example"]),
    ("spf pass for the attacker's envelope", ["mx.desk.test; spf=pass smtp.mailfrom=bounce@evil.example"]),
    ("every method short of pass", ["mx.desk.test; dkim=neutral header.d=customer.example; spf=softfail "
                                    "smtp.mailfrom=customer.example; dmarc=none header.from=customer.example"]),
    ("dmarc fail wins over an aligned dkim pass", ["mx.desk.test; dkim=pass header.d=customer.example; "
                                                   "dmarc=fail header.from=customer.example"]),
    ("a pass and a fail for dmarc in one header", ["mx.desk.test; dmarc=pass header.from=customer.example; "
                                                   "dmarc=fail header.from=customer.example"]),
    ("pass only in a comment", ["mx.desk.test; dmarc=fail (dmarc=pass header.from=customer.example) "
                                "header.from=customer.example"]),
    ("oversized header with our id", ["mx.desk.test; dmarc=pass header.from=customer.example; " + "x=y; " * 3000]),
    ("header of an attached message/rfc822 (never in the top list)", ["mx.evil.example; none"]),
]


@pytest.mark.parametrize("name, headers", FORGED, ids=[row[0] for row in FORGED])
def test_forged_authentication_results_verify_nothing(name: str, headers: list[str]) -> None:
    """B4: 20+ forged variants -> 0 verified; only the topmost header with our id is read."""
    assert verified_domain(headers, TRUSTED, CUSTOMER).verified is False


def test_there_are_at_least_twenty_forged_variants() -> None:
    assert len(FORGED) >= 20


@pytest.mark.parametrize("trusted, domain, reason", [
    (set(), CUSTOMER, "no trusted authserv-id"),
    ({" "}, CUSTOMER, "no trusted authserv-id"),
    (TRUSTED, "", "no valid From domain"),
    (TRUSTED, "localhost", "no valid From domain"),
    (TRUSTED, "customer.example\nx", "no valid From domain"),
])
def test_without_configuration_or_a_from_domain_nothing_is_verified(trusted: set[str], domain: str,
                                                                    reason: str) -> None:
    result = verified_domain(["mx.desk.test; dmarc=pass header.from=customer.example"], trusted, domain)
    assert result == Verification(False, "none", result.reason)
    assert reason in result.reason


def test_the_reason_names_what_failed() -> None:
    result = verified_domain(["mx.desk.test; dmarc=fail header.from=customer.example"], TRUSTED, CUSTOMER)
    assert (result.method, result.reason) == ("dmarc", "dmarc=fail for customer.example")


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.text(max_size=150), max_size=4), st.text(max_size=40))
def test_fuzzing_raises_nothing(headers: list[str], domain: str) -> None:
    """E9: random header values and domains never raise."""
    verified_domain(headers, TRUSTED, domain)


_RESULT = st.builds("{}={} {}.{}={}".format, st.sampled_from(["dmarc", "dkim", "spf", "arc", "x"]),
                    st.sampled_from(["pass", "fail", "none", "Pass", ""]), st.sampled_from(["header", "smtp", "x"]),
                    st.sampled_from(["from", "d", "mailfrom", "i"]),
                    st.sampled_from(["customer.example", "evil.example", "a@customer.example", '"x"', "", "("]))


@settings(max_examples=2000, deadline=None)
@given(st.lists(_RESULT, max_size=4), st.text(max_size=30))
def test_fuzzing_near_valid_trusted_headers_raises_nothing(results: list[str], noise: str) -> None:
    value = "mx.desk.test; " + "; ".join(results) + noise
    result = verified_domain([value], TRUSTED, CUSTOMER)
    assert isinstance(result.verified, bool)
