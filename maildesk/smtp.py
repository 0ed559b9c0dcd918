"""SMTP out: the last step of the flow (... -> outbox -> SMTP), and the only smtplib user.

`outbox.send_due` hands each built message to a `Transport`; `SmtpTransport` is the one
that relays it to the configured server over a single connection kept open across
messages, pipelining each message's commands (RFC 2920) where the server offers it, so that
a distant relay costs two round trips a message instead of four. Every outcome is
translated into the outbox's terms: per-recipient results for refusals at RCPT (smtplib's
returned dict is never dropped), and `DeliveryError` (temporary or permanent) when the
whole message could not be handed over. Temporary means 4xx, a dropped connection, a
timeout or a failed login; permanent means 5xx (RFC 5321 section 4.2.1). No smtplib type
leaves this module, and no message ever contains the password.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
import time

from maildesk.config import Settings
from maildesk.outbox import DeliveryError, RecipientResult, Transport, folder_transport

log = logging.getLogger("maildesk.smtp")
# A connection idle for longer than this is checked with NOOP before use: servers drop
# idle clients (Postfix after 300 s), and within a burst of sends a NOOP per message
# would only add a round trip.
IDLE_CHECK_SECONDS = 2.0
_LEADING_DOT = re.compile(rb"(?m)^\.")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


class SmtpTransport:
    """Relays outbox messages to the configured SMTP server over one reused connection.

    Not thread-safe: the daemon's single sender thread owns it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: smtplib.SMTP | None = None
        self._last_used = 0.0

    def deliver(self, envelope_from: str, recipients: list[str], message: bytes,
                message_id: str) -> dict[str, RecipientResult]:
        """Send one message; raises DeliveryError when no recipient could be reached."""
        client = self._connection()
        try:
            options = _mail_options(client, envelope_from, recipients, message)
            if client.has_extn("pipelining"):
                refused = _send_pipelined(client, envelope_from, recipients, message, options)
            else:
                refused = client.sendmail(envelope_from, recipients, message, mail_options=options)
        except smtplib.SMTPRecipientsRefused as error:
            refused = error.recipients  # every recipient refused at RCPT: still a per-recipient answer
        except smtplib.SMTPSenderRefused as error:
            raise _response_error("MAIL FROM refused", error) from None
        except smtplib.SMTPDataError as error:
            raise _response_error("message refused", error) from None
        except smtplib.SMTPNotSupportedError as error:
            raise DeliveryError(f"the SMTP server cannot take this message: {error}", permanent=True) from None
        except smtplib.SMTPResponseException as error:
            self._drop()
            raise _response_error("SMTP error", error) from None
        except (smtplib.SMTPException, OSError) as error:
            # A disconnect after DATA leaves it unknown whether the server took the message:
            # retrying may send a second copy, which beats losing it (same Message-ID).
            self._drop()
            raise DeliveryError(f"connection to {self._where()} lost: {_describe(error)}", permanent=False) from None
        finally:
            self._last_used = time.monotonic()
            if self._client is not None and self._client.sock is None:
                self._drop()  # smtplib closes by itself after a 421 (service shutting down)
        log.debug("message_id=%s relayed to %s, refused=%d of %d", message_id, self._where(), len(refused),
                  len(recipients))
        return {recipient: _recipient_result(refused.get(recipient)) for recipient in recipients}

    def close(self) -> None:
        """QUIT politely; a server that already left is fine too."""
        if self._client is None:
            return
        try:
            self._client.quit()
        except (smtplib.SMTPException, OSError):
            self._client.close()
        self._client = None

    def _connection(self) -> smtplib.SMTP:
        """The open connection, checked with NOOP after idling; a new one when it was dropped."""
        if self._client is not None and time.monotonic() - self._last_used > IDLE_CHECK_SECONDS:
            try:
                alive = self._client.noop()[0] == 250
            except (smtplib.SMTPException, OSError):
                alive = False
            if not alive:
                log.info("connection to %s was dropped; reconnecting", self._where())
                self._drop()
        if self._client is None:
            self._client = open_connection(self.settings)
            self._last_used = time.monotonic()
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
        self._client = None

    def _where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"


def open_connection(settings: Settings) -> smtplib.SMTP:
    """A connected, greeted, secured and logged-in client, or DeliveryError saying what failed."""
    where = f"{settings.smtp_host}:{settings.smtp_port}"
    client: smtplib.SMTP | None = None
    try:
        if settings.smtp_ssl:  # implicit TLS from the first byte (RFC 8314), usually port 465
            client = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_seconds)
        client.ehlo()
        if settings.smtp_starttls:
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if settings.smtp_user:
            client.login(settings.smtp_user, settings.smtp_password)
        return client
    except smtplib.SMTPAuthenticationError as error:
        _close_quietly(client)
        reply = _scrub(_reply_text(error), settings.smtp_password)
        raise DeliveryError(f"SMTP login failed for user {settings.smtp_user} at {where} ({reply})",
                            permanent=False) from None
    except smtplib.SMTPNotSupportedError as error:
        _close_quietly(client)
        raise DeliveryError(f"the SMTP server {where} {_unsupported(error, settings)}", permanent=False) from None
    except ssl.SSLError as error:
        _close_quietly(client)
        raise DeliveryError(f"TLS with the SMTP server {where} failed: {_describe(error)}; check MAILDESK_SMTP_SSL, "
                            "MAILDESK_SMTP_STARTTLS and the port", permanent=False) from None
    except smtplib.SMTPServerDisconnected as error:
        _close_quietly(client)
        raise DeliveryError(f"the SMTP server {where} closed the connection ({_describe(error)}); check "
                            "MAILDESK_SMTP_SSL, MAILDESK_SMTP_STARTTLS and the port", permanent=False) from None
    except smtplib.SMTPResponseException as error:
        _close_quietly(client)
        reply = _scrub(_reply_text(error), settings.smtp_password)
        raise DeliveryError(f"the SMTP server {where} refused the session: {reply}", permanent=False) from None
    except (smtplib.SMTPException, OSError) as error:
        _close_quietly(client)
        raise DeliveryError(f"cannot reach the SMTP server {where}: {_describe(error)}", permanent=False) from None


def check_connection(settings: Settings) -> str | None:
    """For `maildesk check`: None when the server takes a session, else what failed (no secrets)."""
    try:
        client = open_connection(settings)
    except DeliveryError as error:
        return str(error)
    try:
        code, reply = client.noop()
        client.quit()
    except (smtplib.SMTPException, OSError) as error:
        _close_quietly(client)
        return f"the SMTP server {settings.smtp_host}:{settings.smtp_port} dropped the session: {_describe(error)}"
    if code != 250:
        return f"the SMTP server {settings.smtp_host}:{settings.smtp_port} answered NOOP with {code} {_decode(reply)}"
    return None


def transport_for(settings: Settings) -> Transport:
    """SMTP when a host is configured, else the folder of .eml files (the embedded default)."""
    return SmtpTransport(settings) if settings.smtp_configured else folder_transport(settings)


def _mail_options(client: smtplib.SMTP, envelope_from: str, recipients: list[str], message: bytes) -> list[str]:
    """SMTPUTF8 for non-ASCII addresses (RFC 6531), 8BITMIME for 8-bit bodies (RFC 6152)."""
    options = []
    if not all(address.isascii() for address in [envelope_from, *recipients]):
        options.append("SMTPUTF8")  # smtplib raises SMTPNotSupportedError if the server lacks it
    if not message.isascii() and client.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    return options


def _send_pipelined(client: smtplib.SMTP, envelope_from: str, recipients: list[str], message: bytes,
                    options: list[str]) -> dict[str, tuple[int, bytes]]:
    """`sendmail` with PIPELINING (RFC 2920): MAIL, every RCPT and DATA go out in one write and
    their replies are read after it, so a message costs two round trips instead of three plus one
    per recipient. Raises what `sendmail` raises; returns the recipients refused at RCPT."""
    if "SMTPUTF8" in options and not client.has_extn("smtputf8"):
        raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
    if client.has_extn("size"):
        options = [*options, f"SIZE={len(message)}"]
    commands = [f"MAIL FROM:{_quoted(envelope_from)}{''.join(' ' + option for option in options)}",
                *(f"RCPT TO:{_quoted(recipient)}" for recipient in recipients), "DATA"]
    client.send("".join(command + "\r\n" for command in commands).encode(
        "utf-8" if "SMTPUTF8" in options else "ascii"))
    sender_reply = client.getreply()
    recipient_replies = [client.getreply() for _ in recipients]
    data_reply = client.getreply()
    refused = {recipient: reply for recipient, reply in zip(recipients, recipient_replies)
               if reply[0] not in (250, 251)}
    if sender_reply[0] != 250 or len(refused) == len(recipients):
        _abandon(client, data_reply)
        if sender_reply[0] != 250:
            raise smtplib.SMTPSenderRefused(sender_reply[0], sender_reply[1], envelope_from)
        raise smtplib.SMTPRecipientsRefused(refused)  # type: ignore[arg-type]
    if data_reply[0] != 354:
        _reset(client)
        raise smtplib.SMTPDataError(*data_reply)
    client.send(_dot_stuffed(message))
    code, reply = client.getreply()
    if code != 250:
        raise smtplib.SMTPDataError(code, reply)
    return refused


def _abandon(client: smtplib.SMTP, data_reply: tuple[int, bytes]) -> None:
    """End a pipelined transaction that has nobody to deliver to. The server should have refused
    DATA; one that said 354 anyway gets an empty message's end, and the transaction is reset."""
    if data_reply[0] == 354:
        client.send(b".\r\n")
        client.getreply()
    _reset(client)


def _reset(client: smtplib.SMTP) -> None:
    """RSET after a refusal; a server that hung up after it (421) is noticed at the next use."""
    try:
        client.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def _quoted(address: str) -> str:
    """`smtplib.quoteaddr`, whose full address parse (30 µs) a plain addr-spec does not need."""
    return f"<{address}>" if _PLAIN_ADDRESS.fullmatch(address) else smtplib.quoteaddr(address)


def _dot_stuffed(message: bytes) -> bytes:
    """The message as DATA carries it (RFC 5321 section 4.5.2): a leading dot doubled, CRLF, dot."""
    stuffed = _LEADING_DOT.sub(b"..", message) if message.startswith(b".") or b"\n." in message else message
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _recipient_result(refusal: tuple[int, bytes] | None) -> RecipientResult:
    if refusal is None:
        return RecipientResult(True, detail="250 accepted")
    code, reply = refusal
    return RecipientResult(False, permanent=code >= 500, detail=f"{code} {_decode(reply)}")


def _response_error(what: str, error: smtplib.SMTPResponseException) -> DeliveryError:
    """4xx: try again later; 5xx: the server will never take it (RFC 5321 section 4.2.1)."""
    return DeliveryError(f"{what}: {_reply_text(error)}", permanent=error.smtp_code >= 500)


def _reply_text(error: smtplib.SMTPResponseException) -> str:
    return f"{error.smtp_code} {_decode(error.smtp_error)}"


def _decode(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _scrub(text: str, secret: str) -> str:
    """Servers echo odd things back; a password must still never reach a log or a screen."""
    return text.replace(secret, "***") if secret else text


def _unsupported(error: smtplib.SMTPNotSupportedError, settings: Settings) -> str:
    if settings.smtp_starttls and "STARTTLS" in str(error):
        return "does not offer STARTTLS; unset MAILDESK_SMTP_STARTTLS or use another port"
    if settings.smtp_user and "AUTH" in str(error):
        return "does not offer AUTH here; set MAILDESK_SMTP_STARTTLS or MAILDESK_SMTP_SSL, or unset MAILDESK_SMTP_USER"
    return f"lacks a needed extension: {error}"


def _close_quietly(client: smtplib.SMTP | None) -> None:
    if client is not None:
        client.close()
