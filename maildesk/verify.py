"""What an incoming mail proves about its sender: strict From, reply token, trusted A-R.

Gathered once per mail, before routing, and handed to the command rule in
`maildesk.core.authorize`. Identity comes from From only (never Reply-To or Sender).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from maildesk.authresults import verified_domain
from maildesk.core.authorize import Evidence
from maildesk.core.identity import Identity, sender_identity
from maildesk.core.mail import InboundMail
from maildesk.core.tokens import token_from_address, token_from_message_id, verify_token

RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To")


@dataclass(frozen=True)
class Sender:
    identity: Identity
    token: str | None
    evidence: Evidence


class SenderSettings(Protocol):
    """What checking a sender reads of the settings (`Settings`, `examine.Examiner`)."""

    @property
    def support_address(self) -> str: ...
    @property
    def support_domain(self) -> str: ...
    @property
    def address_separator(self) -> str: ...
    @property
    def secret_key(self) -> str: ...
    @property
    def trusted_authserv_ids(self) -> tuple[str, ...]: ...


def find_token(mail: InboundMail, settings: SenderSettings) -> str | None:
    """A token in a recipient address first, then in the threading headers."""
    recipients = [*mail.to, *mail.cc]
    for name in RECIPIENT_HEADERS:
        recipients.extend(mail.header_values(name))
    for address in recipients:
        token = token_from_address(address, settings.support_address, settings.address_separator)
        if token:
            return token
    for message_id in (mail.in_reply_to, *reversed(mail.references)):
        token = token_from_message_id(message_id, settings.support_domain)
        if token:
            return token
    return None


def examine(mail: InboundMail, settings: SenderSettings) -> Sender:
    identity = sender_identity(mail.header_values("From") or ([mail.from_address] if mail.from_address else []))
    token = find_token(mail, settings)
    claims = None
    token_problem = "" if token else "no_token"
    if token and identity.address:
        claims = verify_token(settings.secret_key.encode("utf-8"), token, recipient=identity.address)
        token_problem = "" if claims else "token_invalid_or_not_yours"
    domain = identity.address.rpartition("@")[2] if identity.address else ""
    verification = verified_domain(mail.header_values("Authentication-Results"),
                                   set(settings.trusted_authserv_ids), domain)
    evidence = Evidence(from_trusted=identity.trusted and identity.address is not None,
                        from_reason=identity.reason, claims=claims, token_problem=token_problem,
                        domain_verified=verification.verified, domain_reason=verification.reason)
    return Sender(identity, token, evidence)
