"""Did our own MTA verify the From domain? Read from its Authentication-Results header.

The only adapter of the `authres` package. Anyone can write an Authentication-Results
header (RFC 8601), so only one is believed: the topmost whose authserv-id is in
MAILDESK_TRUSTED_AUTHSERV_IDS. Our MTA prepends its header above everything the sender
wrote and removes incoming ones that claim its id (RFC 8601 §5), so that header is the
MTA's own. Headers below it, headers from other ids and headers in attached messages are
ignored. If the topmost header with our id cannot be parsed we stop there and verify
nothing: looking further down would reach headers the sender wrote.

The From domain is verified by `dmarc=pass` for exactly that domain (RFC 7489 §3.1:
DMARC already checked alignment), or by `dkim=pass` / `spf=pass` whose domain is aligned
with it. Without the Public Suffix List we allow only the conservative half of relaxed
alignment (RFC 7489 §3.1.1): the signing or envelope domain equals the From domain or is
a parent of it (`d=customer.example` for `From: x@mail.customer.example`). A sub-domain
signing for its parent is not accepted: on shared hosting suffixes anyone may control a
sub-domain. A `dmarc=fail` for the From domain in the trusted header wins over any pass;
`dmarc=none` (no policy published) leaves the decision to DKIM and SPF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import authres

MAX_HEADER_LENGTH = 8192
_FIRST_TOKEN = re.compile(r"^\s*(?:\([^()]*\)\s*)*([^\s;()]+)")
_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+")


@dataclass(frozen=True)
class Verification:
    """Whether the From domain is verified, by which method, and why (for the audit log).

    `header` is the Authentication-Results value that was used, '' when none counted.
    """

    verified: bool
    method: str
    reason: str
    header: str = ""


def verified_domain(header_values: list[str], trusted_ids: set[str], from_domain: str) -> Verification:
    """Read the trusted Authentication-Results for `from_domain`; never raises.

    `header_values` are the Authentication-Results values in top-down order, as they
    appear in the message.
    """
    domain = _domain(from_domain)
    if not domain:
        return Verification(False, "none", "no valid From domain")
    trusted = {identifier.strip().lower() for identifier in trusted_ids if identifier.strip()}
    if not trusted:
        return Verification(False, "none", "no trusted authserv-id configured")
    for value in header_values:
        if not isinstance(value, str) or _authserv_id(value) not in trusted:
            continue
        parsed = _parse(value)
        if parsed is None or str(parsed.authserv_id).lower() not in trusted:
            return Verification(False, "none", "the trusted Authentication-Results header is malformed", value)
        return _judge(_results(parsed), domain, value)
    return Verification(False, "none", "no Authentication-Results header from a trusted authserv-id")


def _authserv_id(value: str) -> str:
    """The first token of the header (RFC 8601 §2.2), read loosely so malformed ones are found too."""
    match = _FIRST_TOKEN.match(value[:MAX_HEADER_LENGTH])
    return match.group(1).lower() if match else ""


def _parse(value: str) -> Any:
    """The authres parse, or None: the library raises more than its own errors on hostile input."""
    if len(value) > MAX_HEADER_LENGTH:
        return None
    try:
        return authres.all_features().parse_value(value)
    except Exception:  # any failure of a third-party parser on hostile input means "not verified"
        return None


def _results(parsed: Any) -> list[tuple[str, str, dict[str, str]]]:
    """(method, result, {"ptype.property": value}) for each result, all lower case.

    A property given twice with different values (`header.d=a.example header.d=b.example`)
    is ambiguous and kept as '', which neither aligns nor names the From domain.
    """
    results = []
    for result in parsed.results:
        properties: dict[str, str] = {}
        for prop in getattr(result, "properties", []):
            key, value = f"{prop.type}.{prop.name}".lower(), str(prop.value).strip().strip('"').lower()
            properties[key] = value if properties.get(key, value) == value else ""
        results.append((str(result.method).lower(), str(result.result).lower(), properties))
    return results


def _judge(results: list[tuple[str, str, dict[str, str]]], domain: str, header: str) -> Verification:
    dmarc = [(result, props) for method, result, props in results if method == "dmarc"
             and props.get("header.from", domain) == domain]
    if any(result == "fail" for result, _ in dmarc):
        return Verification(False, "dmarc", f"dmarc=fail for {domain}", header)
    if any(result == "pass" and props.get("header.from") == domain for result, props in dmarc):
        return Verification(True, "dmarc", f"dmarc=pass header.from={domain}", header)
    for method, result, props in results:
        if method == "dkim" and result == "pass" and _aligned(props.get("header.d", ""), domain):
            return Verification(True, "dkim", f"dkim=pass header.d={props['header.d']} aligned with {domain}",
                                header)
    for method, result, props in results:
        mailfrom = props.get("smtp.mailfrom", "").rpartition("@")[2]
        if method == "spf" and result == "pass" and _aligned(mailfrom, domain):
            return Verification(True, "spf", f"spf=pass smtp.mailfrom={mailfrom} aligned with {domain}", header)
    return Verification(False, "none", f"no pass aligned with {domain}", header)


def _aligned(authenticated: str, from_domain: str) -> bool:
    """Equal, or the authenticated domain is a parent of the From domain (see module docstring)."""
    candidate = _domain(authenticated)
    return bool(candidate) and (candidate == from_domain or from_domain.endswith("." + candidate))


def _domain(value: str) -> str:
    """A lower-case DNS name with at least two labels, else ''."""
    candidate = value.strip().lower().rstrip(".")
    return candidate if _DOMAIN.fullmatch(candidate) else ""
