"""Is a mail from a person, or from a machine? Decided before routing.

Machine mail (auto-replies, bounces, list and bulk mail) never gets an automatic answer,
never runs a command, never reopens a ticket and never touches an auto-close clock; it
is kept and logged with its class. Our own mail coming back ("own_loop") is not ticketed
at all. RFC 3834 §2 asks responders not to answer such mail, and §5 defines
`Auto-Submitted`; the other signals are those RT, Zammad, FreeScout, django-helpdesk and
Mailman check (see ../shared/notes/reliability-research.md §1.3).

The policy is the RULES table, read top to bottom; the first rule that fires decides,
so the most specific classes come first (a DSN also carries `Auto-Submitted`, but it is
a bounce). A rule returns the header and value that decided, for the log.

`X-Auto-Response-Suppress` alone is deliberately not a marker: it *asks* recipients not
to auto-reply and says nothing about its own origin (Sisimai #491 removed it for that
reason); Outlook sets it on ordinary meeting mail. Only with
`X-MS-Exchange-Inbox-Rules-Loop` (an Exchange rule generated the mail) does it count.

Subjects are the weakest signal and are read narrowly, because people write to a service
desk *about* out-of-office replies ("Out of office not working"): an out-of-office phrase
counts only at the very start of the subject and only when what follows looks like a
reply to our own mail (a reply prefix or a `[SD-123]` key) or when nothing follows in a
mail that answers another one.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from maildesk.core.mail import InboundMail

LOOP_HEADER = "X-Maildesk-Loop"  # on every mail we send: seeing it come in is our own loop
KINDS = ("human", "auto_reply", "bulk", "bounce", "own_loop")
BOUNCE_SENDERS = frozenset({"mailer-daemon", "postmaster"})
REPORT_TYPES = frozenset({"multipart/report", "message/delivery-status", "message/global-delivery-status",
                          "message/disposition-notification", "message/feedback-report"})
LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Post", "List-Help", "List-Subscribe", "List-Owner",
                "List-Archive", "List-Unsubscribe-Post")
AUTO_REPLY_MARKERS = ("X-Autoreply", "X-Autorespond", "X-Autoresponder")
OUT_OF_OFFICE_PHRASES = (
    "automatic reply", "auto reply", "auto-reply", "autoreply", "auto response", "auto-response", "autoresponse",
    "out of office", "out of the office", "out of office autoreply", "out of office reply", "away from the office",
    "automātiskā atbilde", "prombūtnē", "prombūtnes paziņojums", "atvaļinājumā",
    "automatische antwort", "abwesenheitsnotiz", "reponse automatique", "absence du bureau",
    "automatinis atsakymas", "automaatne vastus", "automaattinen vastaus",
    "автоматический ответ", "автоответ", "вне офиса",
)
REPLY_PREFIX = re.compile(r"^(re|fw|fwd|aw|wg|sv|vs|atb|pars|tr|odp|отв|пересл)\s*(\[\d+\])?\s*:", re.IGNORECASE)
TICKET_KEY = re.compile(r"\[\s*[a-z][a-z0-9]{0,9}\s*-\s*\d{1,12}\s*\]", re.IGNORECASE)
MAX_SUBJECT_SCAN = 500


def _fold(text: str) -> str:
    """Lower case, no diacritics, single spaces: `Prombūtnē` -> `prombutne`.

    The phrases are folded the same way, so Cyrillic letters that lose a mark
    (`й` -> `и`) still match.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(plain.casefold().split())


_PHRASE = re.compile("^(" + "|".join(re.escape(phrase) for phrase in
                                     sorted({_fold(phrase) for phrase in OUT_OF_OFFICE_PHRASES}, key=len, reverse=True))
                     + r")(?!\w)(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Classification:
    """The class of a mail and the header (and value) that decided it."""

    kind: str
    reason: str

    @property
    def is_machine(self) -> bool:
        """Anything but a person: no automatic answer, no command, no reopening."""
        return self.kind != "human"


@dataclass(frozen=True)
class Context:
    """What the rules know about us."""

    support_address: str
    own_domain: str
    loop_header: str


Check = Callable[[InboundMail, Context], str]


@dataclass(frozen=True)
class Rule:
    kind: str
    check: Check


def classify(mail: InboundMail, *, support_address: str, own_domain: str,
             loop_header: str = LOOP_HEADER) -> Classification:
    """The class of `mail` by the first rule in RULES that fires; "human" when none does."""
    context = Context(support_address.strip().lower(), own_domain.strip().lower().strip("."), loop_header)
    for rule in RULES:
        reason = rule.check(mail, context)
        if reason:
            return Classification(rule.kind, reason)
    return Classification("human", "no machine marker")


def _token(value: str) -> str:
    """The first word of a header value, lower case: `auto-replied; owner-email=...` -> `auto-replied`."""
    words = re.split(r"[\s;,(]+", value.strip().lower(), maxsplit=1)
    return words[0] if words else ""


def _shown(name: str, value: str) -> str:
    return f"{name}: {' '.join(value.split())[:80]}"


def _local_part(address: str) -> str:
    return address.strip().strip("<>").lower().rpartition("@")[0] or address.strip().strip("<>").lower()


def _domain_of(address: str) -> str:
    return address.strip().strip("<>").lower().rpartition("@")[2].rstrip(">").strip()


def own_loop_header(mail: InboundMail, context: Context) -> str:
    """Our own loop header on incoming mail: our own notification came back (RT's X-RT-Loop-Prevention)."""
    values = mail.header_values(context.loop_header)
    return _shown(context.loop_header, values[0]) if values else ""


def from_our_support_address(mail: InboundMail, context: Context) -> str:
    return f"From: {mail.from_address}" if mail.from_address and mail.from_address == context.support_address else ""


def message_id_on_our_domain(mail: InboundMail, context: Context) -> str:
    """A Message-ID we generated, from anyone but a colleague on our own domain.

    Agents on the support domain write with mail clients that also put our domain in
    their Message-IDs, so their mail must not count as ours (Zammad pairs this check with
    `Precedence: bulk` for the same reason).
    """
    message_id = mail.message_id or mail.header("Message-ID")
    if not context.own_domain or _domain_of(message_id) != context.own_domain:
        return ""
    if _domain_of(mail.from_address) == context.own_domain and mail.from_address != context.support_address:
        return ""
    return _shown("Message-ID", message_id)


def delivery_report(mail: InboundMail, context: Context) -> str:
    """RFC 6522 `multipart/report`: DSNs (RFC 3464), read receipts (RFC 8098), abuse reports.

    Some broken bounces carry the report part alone as the top content type.
    """
    content_type = mail.header("Content-Type")
    return _shown("Content-Type", content_type) if _token(content_type) in REPORT_TYPES else ""


def null_return_path(mail: InboundMail, context: Context) -> str:
    """RFC 5321 §4.5.5: bounces are sent with the null reverse-path `<>`; never answer those."""
    for value in mail.header_values("Return-Path"):
        if re.fullmatch(r"\s*<\s*>\s*", value):
            return "Return-Path: <>"
    return ""


def bounce_sender(mail: InboundMail, context: Context) -> str:
    local = _local_part(mail.from_address)
    return f"From: {mail.from_address}" if local in BOUNCE_SENDERS else ""


def failed_recipients(mail: InboundMail, context: Context) -> str:
    """Exim writes `X-Failed-Recipients` on its bounces, which are not always multipart/report."""
    values = mail.header_values("X-Failed-Recipients")
    return _shown("X-Failed-Recipients", values[0]) if values else ""


def auto_submitted(mail: InboundMail, context: Context) -> str:
    """RFC 3834 §5: any value other than `no` means the mail was sent automatically."""
    for value in mail.header_values("Auto-Submitted"):
        if _token(value) != "no":
            return _shown("Auto-Submitted", value)
    return ""


def auto_reply_marker(mail: InboundMail, context: Context) -> str:
    """`X-Autoreply` / `X-Autorespond` (any value), as FreeScout checks."""
    return _first_present(mail, AUTO_REPLY_MARKERS)


def precedence(kinds: frozenset[str]) -> Check:
    """`Precedence` / `X-Precedence` with one of `kinds` (RFC 3834 §3.1.8 mentions the field)."""
    def check(mail: InboundMail, context: Context) -> str:
        for name in ("Precedence", "X-Precedence"):
            for value in mail.header_values(name):
                if _token(value) in kinds:
                    return _shown(name, value)
        return ""
    return check


def exchange_rule_reply(mail: InboundMail, context: Context) -> str:
    """Exchange out-of-office: both headers together (Zammad's out_of_office_check)."""
    suppress = mail.header("X-Auto-Response-Suppress")
    if suppress and mail.header_values("X-MS-Exchange-Inbox-Rules-Loop"):
        return _shown("X-MS-Exchange-Inbox-Rules-Loop", mail.header("X-MS-Exchange-Inbox-Rules-Loop"))
    return ""


def machine_flags(mail: InboundMail, context: Context) -> str:
    """`X-Loop: yes` (Zammad), `X-FC-Machinegenerated: true` (RT), `X-Ack: no` (Mailman)."""
    for name, values in (("X-Loop", {"yes", "true"}), ("X-FC-Machinegenerated", {"true"}), ("X-Ack", {"no"})):
        for value in mail.header_values(name):
            if _token(value) in values:
                return _shown(name, value)
    return ""


def out_of_office_subject(mail: InboundMail, context: Context) -> str:
    """An out-of-office subject, read narrowly (see the module docstring)."""
    folded = _fold(mail.subject[:MAX_SUBJECT_SCAN])
    match = _PHRASE.match(folded)
    if match is None:
        return ""
    rest = match.group(2).strip()
    answers_something = bool(mail.in_reply_to.strip() or mail.references)
    if not rest.strip(" .!-"):
        return _shown("Subject", mail.subject) if answers_something else ""
    if not rest.startswith(":"):
        return ""
    after = rest[1:].strip()
    if not after or REPLY_PREFIX.match(after) or TICKET_KEY.search(after):
        return _shown("Subject", mail.subject)
    return ""


def list_headers(mail: InboundMail, context: Context) -> str:
    """RFC 2369 / RFC 2919 `List-*` fields: a mailing list or a newsletter."""
    return _first_present(mail, LIST_HEADERS)


def _first_present(mail: InboundMail, names: tuple[str, ...]) -> str:
    """The first of these headers that the mail has, shown as the verdict's reason."""
    for name in names:
        values = mail.header_values(name)
        if values:
            return _shown(name, values[0])
    return ""


RULES: tuple[Rule, ...] = (
    Rule("own_loop", own_loop_header),
    Rule("own_loop", from_our_support_address),
    Rule("own_loop", message_id_on_our_domain),
    Rule("bounce", delivery_report),
    Rule("bounce", null_return_path),
    Rule("bounce", bounce_sender),
    Rule("bounce", failed_recipients),
    Rule("auto_reply", auto_submitted),
    Rule("auto_reply", auto_reply_marker),
    Rule("auto_reply", precedence(frozenset({"auto_reply"}))),
    Rule("auto_reply", exchange_rule_reply),
    Rule("auto_reply", machine_flags),
    Rule("auto_reply", out_of_office_subject),
    Rule("bulk", precedence(frozenset({"bulk", "junk", "list"}))),
    Rule("bulk", list_headers),
)
