"""Reply tokens: who a notification went to, about which ticket, for what, signed.

Every notification to a person carries `support+<token>@domain` as its reply address and
the same token in its Message-ID. A reply that comes back to a valid token, from the very
address the token was issued to, proves that the writer received our mail (the GitLab and
Gitea pattern); the routing step uses the token before the `[SD-123]` subject key.

The token is `<ticket>.<purpose><version>.<mac>`, for example `sd-123.e2.<24 chars>`:
the ticket and purpose are readable so that a token can be checked without a database
lookup; the recipient is not written into the token but is bound by the MAC, so a token
forwarded to a colleague does not verify for the colleague. The MAC is HMAC-SHA256,
truncated to 120 bits (RFC 2104 §5 recommends no fewer than 80; Gitea uses 80), written
in lower-case base32 without padding: 15 bytes make exactly 24 characters, so there are
no spare bits and no two strings carry the same MAC. Lower case because some MTAs fold
local parts to lower case, and base32 survives that. The local part stays under the 64
octets of RFC 5321 §4.5.3.1.1.

`verify_token` accepts only the exact canonical string it would issue; address helpers
fold case before calling it, because case is not part of the secret.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

PURPOSE_CODES: dict[str, str] = {"reply": "r", "estimate": "e", "confirm": "c"}
PURPOSES_BY_CODE: dict[str, str] = {code: purpose for purpose, code in PURPOSE_CODES.items()}
MAC_BYTES = 15
MAC_CHARS = 24
MAX_VERSION = 999_999
MAX_LOCAL_PART = 64
KEY_LABEL = b"maildesk reply token v1"

_TICKET = re.compile(r"[a-z0-9]{1,12}(?:-[a-z0-9]{1,12})?")
_TOKEN = re.compile(r"(?P<ticket>[a-z0-9]{1,12}(?:-[a-z0-9]{1,12})?)\.(?P<code>[rec])(?P<version>0|[1-9][0-9]{0,5})"
                    r"\.(?P<mac>[a-z2-7]{24})")


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: the ticket key (upper case), purpose and version."""

    ticket: str
    purpose: str
    version: int


def make_token(secret: bytes, *, ticket: str, recipient: str, purpose: str, version: int = 0) -> str:
    """The token for one recipient, ticket and purpose; the same inputs give the same token.

    `version` is the estimate version for purpose "estimate", so that a changed estimate
    voids approvals of the old one. Raises ValueError on inputs that could not round-trip.
    """
    if not secret:
        raise ValueError("the token secret is empty")
    if purpose not in PURPOSE_CODES:
        raise ValueError(f"unknown token purpose {purpose!r}")
    if not 0 <= version <= MAX_VERSION:
        raise ValueError(f"token version must be 0..{MAX_VERSION}")
    ticket_part = ticket.strip().lower()
    if not _TICKET.fullmatch(ticket_part):
        raise ValueError(f"ticket {ticket!r} cannot be put in a token")
    if "@" not in recipient:
        raise ValueError("the recipient must be a mail address")
    head = f"{ticket_part}.{PURPOSE_CODES[purpose]}{version}"
    return f"{head}.{_mac(secret, head, _canonical_recipient(recipient))}"


def verify_token(secret: bytes, token: str, *, recipient: str) -> TokenClaims | None:
    """The token's claims if it was issued by us to `recipient`, else None; never raises.

    The MAC is compared with `hmac.compare_digest` so that timing does not reveal how
    many leading characters of a forgery were right.
    """
    if not secret or not isinstance(token, str) or not isinstance(recipient, str) or "@" not in recipient:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    head = token[:match.start("mac") - 1]
    expected = _mac(secret, head, _canonical_recipient(recipient))
    if not hmac.compare_digest(expected.encode("ascii"), match.group("mac").encode("ascii")):
        return None
    return TokenClaims(match.group("ticket").upper(), PURPOSES_BY_CODE[match.group("code")],
                       int(match.group("version")))


def reply_address(support_address: str, token: str, separator: str = "+") -> str:
    """`support+TOKEN@domain`: the Reply-To of a notification carrying `token`."""
    local, domain = _split_support(support_address)
    if not _TOKEN.fullmatch(token):
        raise ValueError("not a reply token")
    _check_separator(separator)
    tagged = f"{local}{separator}{token}"
    if len(tagged) > MAX_LOCAL_PART:
        raise ValueError("the tagged local part would be longer than 64 octets (RFC 5321 §4.5.3.1.1)")
    return f"{tagged}@{domain}"


def token_from_address(address: str, support_address: str, separator: str = "+") -> str | None:
    """The token in a recipient address such as `support+TOKEN@domain`, else None; never raises.

    Case is folded: mailbox local parts may be case-folded on the way, and the token
    alphabet does not depend on case.
    """
    if not isinstance(address, str) or not _valid_separator(separator):
        return None
    try:
        local, domain = _split_support(support_address)
    except ValueError:
        return None
    candidate = address.strip().strip("<>").lower()
    prefix, suffix = f"{local}{separator}", f"@{domain}"
    if not (candidate.startswith(prefix) and candidate.endswith(suffix)):
        return None
    token = candidate[len(prefix):len(candidate) - len(suffix)]
    return token if _TOKEN.fullmatch(token) else None


def message_id_with_token(token: str, domain: str, unique: str) -> str:
    """A Message-ID carrying the token, `<TOKEN.UNIQUE@domain>`, for replies sent to From."""
    if not _TOKEN.fullmatch(token) or not re.fullmatch(r"[a-z0-9]{1,40}", unique):
        raise ValueError("the token or the unique part cannot go in a Message-ID")
    return f"<{token}.{unique}@{domain.lower()}>"


def token_from_message_id(message_id: str, domain: str) -> str | None:
    """The token in one of our Message-IDs (as made by `message_id_with_token`), else None."""
    if not isinstance(message_id, str) or not isinstance(domain, str):
        return None
    candidate = message_id.strip().strip("<>").lower()
    left, at, right = candidate.rpartition("@")
    if not at or right != domain.strip().lower():
        return None
    token, dot, unique = left.rpartition(".")
    if not dot or not re.fullmatch(r"[a-z0-9]{1,40}", unique):
        return None
    return token if _TOKEN.fullmatch(token) else None


def _mac(secret: bytes, head: str, recipient: str) -> str:
    """HMAC over the token head and the recipient, with a key derived for this use only.

    Deriving the key keeps reply tokens from ever being valid MACs for any other use of
    MAILDESK_SECRET_KEY. NUL separators keep the fields from running into each other.
    """
    mac = _keyed(secret).copy()
    mac.update(f"{head}\x00{recipient}".encode("utf-8"))
    return _base32(mac.digest()[:MAC_BYTES])


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """An HMAC keyed with the derived key, copied for each MAC: deriving and keying cost twice
    what the MAC itself does (OpenSSL looks the digest up anew for each new HMAC)."""
    return hmac.new(hmac.new(secret, KEY_LABEL, hashlib.sha256).digest(), digestmod=hashlib.sha256)


_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_BASE32_PAIRS = tuple(_BASE32[number >> 5] + _BASE32[number & 31] for number in range(1024))


def _base32(digest: bytes) -> str:
    """Lower-case base32 of 15 bytes (24 characters, no padding), as `base64.b32encode` writes
    it, two characters at a time: the stdlib's encoder is pure Python, 5 µs a MAC."""
    number = int.from_bytes(digest, "big")
    return "".join([_BASE32_PAIRS[(number >> shift) & 1023] for shift in range(110, -1, -10)])


def _canonical_recipient(recipient: str) -> str:
    return recipient.strip().lower()


def _split_support(support_address: str) -> tuple[str, str]:
    local, at, domain = support_address.strip().lower().rpartition("@")
    if not at or not local or not domain:
        raise ValueError("the support address must look like support@example.com")
    return local, domain


def _valid_separator(separator: str) -> bool:
    return isinstance(separator, str) and len(separator) == 1 and separator in "+-=_"


def _check_separator(separator: str) -> None:
    if not _valid_separator(separator):
        raise ValueError("the address separator must be one of + - = _")
