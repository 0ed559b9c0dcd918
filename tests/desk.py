"""A service desk for end-to-end tests: the real `maildesk` command line on a fresh database.

Commands run in-process through Typer's CliRunner with the environment a user would set,
so a test reads like a session at the terminal: add people, ingest mail, look at tickets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from maildesk.cli import app
from tests.mailbuilder import make_mail


TRUSTED_MTA = "mx.desk.example"


class Desk:
    def __init__(self, directory: Path, database_url: str | None = None, **settings: str) -> None:
        self.directory = directory
        self.env = {"MAILDESK_DATA_DIR": str(directory / "var"), "MAILDESK_SUPPORT_ADDRESS": "support@desk.example",
                    "MAILDESK_LANGUAGE": "en", "MAILDESK_ENVIRONMENT": "development",
                    "MAILDESK_TRUSTED_AUTHSERV_IDS": TRUSTED_MTA}
        if database_url:
            self.env["MAILDESK_DATABASE_URL"] = database_url
        self.env.update({f"MAILDESK_{key.upper()}": value for key, value in settings.items()})
        self.runner = CliRunner()
        self.mail_count = 0
        self.run("db", "upgrade")

    def run(self, *args: str, input: bytes | None = None, expect: int = 0) -> str:
        result = self.runner.invoke(app, list(args), env=self.env, input=input, catch_exceptions=False)
        assert result.exit_code == expect, f"maildesk {' '.join(args)} -> {result.exit_code}: {result.output}"
        return result.output

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    def ingest(self, raw: bytes, *, expect: int = 0) -> str:
        self.mail_count += 1
        path = self.directory / f"mail-{self.mail_count}.eml"
        path.write_bytes(raw)
        return self.run("ingest", str(path), expect=expect)

    def mail(self, sender: str, subject: str, body: str, *, to: str | None = None, dmarc: str | None = "pass",
             headers: dict[str, str] | None = None, **options: Any) -> str:
        """Send a mail to the desk as our MTA delivers it (with its DMARC verdict); returns the Message-ID."""
        all_headers = dict(headers or {})
        if dmarc is not None:
            all_headers = {"Authentication-Results": f"{TRUSTED_MTA}; dmarc={dmarc} "
                                                     f"header.from={sender.rpartition('@')[2]}", **all_headers}
        raw = make_mail(sender, subject, body, to=to or self.env["MAILDESK_SUPPORT_ADDRESS"], headers=all_headers,
                        **options)
        self.ingest(raw)
        return raw.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode()

    def reply(self, sender: str, key: str, body: str, **options: Any) -> str:
        """Answer the last notification `sender` got about ticket `key`, as a mail client does:
        to its Reply-To (the reply-token address), in its thread, subject `Re: ...`."""
        mails = [row for row in self.mails_to(sender) if row["ticket"] == key]
        if not mails:
            return self.mail(sender, f"Re: [{key}] (no notification)", body, **options)
        last = mails[-1]
        return self.mail(sender, f"Re: {last['subject']}", body, to=last["reply_to"], in_reply_to=last["message_id"],
                         **options)

    def ticket(self, key: str) -> dict[str, Any]:
        return self.json("ticket", "show", key)

    def outbox(self) -> list[dict[str, Any]]:
        return self.json("outbox", "list")

    def mails_to(self, address: str, template: str | None = None) -> list[dict[str, Any]]:
        return [row for row in self.outbox() if address in row["to"] and (template is None or row["template"] == template)]

    def last_mail_to(self, address: str) -> dict[str, Any]:
        mails = self.mails_to(address)
        assert mails, f"no mail to {address}"
        return mails[-1]


def standard_people(desk: Desk) -> None:
    """ACME with a reporter, a responsible representative and a colleague; Other Ltd; two agents."""
    desk.run("org", "add", "ACME", "--domain", "acme.example", "--language", "lv")
    desk.run("org", "add", "Other Ltd", "--domain", "other.example")
    desk.run("user", "add", "anna@acme.example", "--name", "Anna Bērziņa", "--org", "ACME")
    desk.run("user", "add", "boss@acme.example", "--name", "Jānis Kalniņš", "--org", "ACME", "--responsible")
    desk.run("user", "add", "peter@acme.example", "--name", "Peter Colleague", "--org", "ACME", "--language", "en")
    desk.run("user", "add", "eve@other.example", "--name", "Eve Other", "--org", "Other Ltd", "--responsible")
    desk.run("user", "add", "agent@desk.example", "--name", "Agnese Aģente", "--agent", "--language", "en")
    desk.run("user", "add", "second@desk.example", "--name", "Second Agent", "--agent")
