"""What a parsed mail says by itself, before the database is asked: its class, its sender's proof,
its commands; and its attachments, spooled to files.

Flow: transport -> inbox -> parse -> **examine** -> route -> commands -> workflow -> store -> ...
Classifying (person or machine), checking From, the reply token and Authentication-Results, and
reading the commands out of the new text need the mail and a few settings only. They run where the
mail is parsed, in the parse helper beside the daemon (`parse_worker`), so that the main process,
the one that holds the database, only routes, decides and writes: 0.1-0.2 ms a mail less in it.
For the same reason the attachments are decoded into files here (`spool`), and what goes back to
the main process is only what it reads: the mail without its headers, HTML and attachment bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from maildesk.core.classify import LOOP_HEADER, Classification, classify
from maildesk.core.commands import ParsedCommands, parse_commands
from maildesk.core.mail import InboundMail
from maildesk.spool import Spooled, spool
from maildesk.verify import Sender, examine

if TYPE_CHECKING:  # the parse helper imports this module: not the settings' loader and dotenv
    from maildesk.config import Settings


@dataclass(frozen=True)
class Examined:
    """A parsed mail with what it says by itself. `mail` keeps what the pipeline reads (its
    headers, HTML and attachments are left where it was parsed); `attachments` are its
    attachments, in files to keep or discard (`spool`)."""

    mail: InboundMail
    classification: Classification
    sender: Sender
    commands: ParsedCommands
    attachments: tuple[Spooled, ...] = ()


@dataclass(frozen=True)
class Examiner:
    """The settings examining needs, and nothing else: it travels to the parse helper with each
    batch, so it stays small and holds no open files or connections."""

    support_address: str
    support_domain: str
    address_separator: str
    trusted_authserv_ids: tuple[str, ...]
    attachments_dir: str  # where attachments are spooled
    secret_key: str = field(repr=False)  # never in a log line or a traceback

    @classmethod
    def of(cls, settings: Settings) -> Examiner:
        return cls(settings.support_address, settings.support_domain, settings.address_separator,
                   tuple(settings.trusted_authserv_ids), str(settings.attachments_dir), settings.secret_key)

    def __call__(self, mail: InboundMail) -> Examined:
        classification = classify(mail, support_address=self.support_address, own_domain=self.support_domain,
                                  loop_header=LOOP_HEADER)
        sender, commands = examine(mail, self), parse_commands(mail.new_text)
        attachments = spool(mail.attachments, self.attachments_dir)
        return Examined(replace(mail, headers=(), html="", attachments=()), classification, sender, commands,
                        attachments)
