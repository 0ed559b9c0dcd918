"""The rule for commands: who may make a mail change a ticket (docs/security.md).

A command runs only when the sender's From is trusted and either (a) the mail came to a
valid reply token issued to that same user for this ticket, or (b) the topmost trusted
Authentication-Results verify the From domain. Approvals (`ACCEPT THE ESTIMATE`,
`CANCEL REQUEST`) need both unless the admin relaxed it; an estimate approval's token
must be for the current estimate version, so a changed estimate voids old approvals.
"""

from __future__ import annotations

from dataclasses import dataclass

from maildesk.core.tokens import TokenClaims
from maildesk.core.workflow import Command

APPROVALS = frozenset({Command.ACCEPT_ESTIMATE, Command.CANCEL_REQUEST})


@dataclass(frozen=True)
class Evidence:
    """What a mail proves about its sender, gathered before any command runs."""

    from_trusted: bool
    from_reason: str
    claims: TokenClaims | None
    token_problem: str
    domain_verified: bool
    domain_reason: str


def token_counts(command: Command, evidence: Evidence, *, ticket_key: str, estimate_version: int) -> str:
    """'' when the token authorises `command` on this ticket, else why not."""
    claims = evidence.claims
    if claims is None:
        return evidence.token_problem or "no_token"
    if claims.ticket != ticket_key:
        return "token_other_ticket"
    if command == Command.ACCEPT_ESTIMATE:
        if claims.purpose != "estimate":
            return "token_not_for_the_estimate"
        if claims.version != estimate_version:
            return "estimate_changed"
    return ""


def authorize(command: Command, evidence: Evidence, *, ticket_key: str, estimate_version: int,
              require_both_for_approvals: bool) -> str:
    """'' when the command may run, else the reason code for the audit log."""
    if not evidence.from_trusted:
        return f"untrusted_from: {evidence.from_reason}"
    token_problem = token_counts(command, evidence, ticket_key=ticket_key, estimate_version=estimate_version)
    domain_problem = "" if evidence.domain_verified else f"domain_not_verified: {evidence.domain_reason}"
    if command in APPROVALS and require_both_for_approvals:
        return token_problem or domain_problem
    if not token_problem or not domain_problem:
        return ""
    return f"{token_problem}; {domain_problem}"
