"""SMTP out: the last step of the flow (... -> outbox -> SMTP), and the only smtplib user.

`outbox.send_due` hands a batch of built messages to a `Transport`; `SmtpTransport` is the
one that relays them to the configured server over a single connection kept open across
messages, pipelining (RFC 2920) where the server offers it: a message's commands go out
together, and with the body of the message before them, so that a distant relay costs one
round trip a message instead of four (two for the last of a batch). Every outcome is
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from maildesk.config import Settings
from maildesk.delivery import Delivery, DeliveryError, Envelope, RecipientResult, Transport, folder_transport

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
        for _envelope, result in self.deliver_many(envelope_from, [Envelope(recipients, message, message_id)]):
            if isinstance(result, DeliveryError):
                raise result
            return dict(result)
        raise AssertionError("deliver_many yields every envelope it takes")

    def deliver_many(self, envelope_from: str, envelopes: Iterable[Envelope]) -> Iterator[Delivery]:
        """Send the messages one after the other over the connection.

        Where the server offers PIPELINING, a message's body and the next one's MAIL, RCPT and
        DATA go out in one write (RFC 2920 section 3.1: message content may start a group), so a
        message costs one round trip; otherwise each goes by smtplib's `sendmail`. A message that
        cannot be handed over comes back with its DeliveryError and the next one is tried, over a
        new connection when this one was lost.
        """
        in_flight: _InFlight | None = None
        try:
            for envelope in envelopes:
                if in_flight is None:
                    try:
                        client = self._connection()
                    except DeliveryError as error:
                        yield envelope, error
                        continue
                    if not client.has_extn("pipelining"):
                        yield envelope, self._send_plain(client, envelope_from, envelope)
                        continue
                in_flight, answered = self._exchange(in_flight, envelope_from, envelope)
                yield from answered
            if in_flight is not None:
                in_flight, answered = self._exchange(in_flight, envelope_from, None)
                yield from answered
        finally:
            if in_flight is not None:  # left mid-transaction: the server still waits for that body
                self._drop()

    def _exchange(self, in_flight: _InFlight | None, envelope_from: str,
                  envelope: Envelope | None) -> tuple[_InFlight | None, list[Delivery]]:
        """One write (the body in flight, then `envelope`'s commands) and its replies: the
        results known now, and the message whose body goes with the next write."""
        client = self._client
        assert client is not None
        answered: list[Delivery] = []
        commands = b""
        if envelope is not None:
            try:
                commands = _commands(client, envelope_from, envelope)
            except smtplib.SMTPNotSupportedError as error:
                answered.append((envelope, DeliveryError(f"the SMTP server cannot take this message: {error}",
                                                         permanent=True)))
                envelope = None
        next_flight: _InFlight | None = None
        try:
            client.send((_dot_stuffed(in_flight.envelope.message) if in_flight else b"") + commands)
            if in_flight is not None:
                answered.append((in_flight.envelope, _body_result(client, in_flight)))
            if envelope is not None:
                replies = _envelope_replies(client, envelope)
                if isinstance(replies, _InFlight):
                    next_flight = replies
                else:
                    answered.append((envelope, replies))
        except (smtplib.SMTPException, OSError) as error:
            # A disconnect after DATA leaves it unknown whether the server took the message:
            # retrying may send a second copy, which beats losing it (same Message-ID).
            self._drop()
            lost = DeliveryError(f"connection to {self._where()} lost: {_describe(error)}", permanent=False)
            done = {id(answer[0]) for answer in answered}
            return None, answered + [(unanswered, lost) for unanswered in (in_flight and in_flight.envelope, envelope)
                                     if unanswered is not None and id(unanswered) not in done]
        finally:
            self._last_used = time.monotonic()
        if client.sock is None:  # smtplib closes by itself after a 421 (service shutting down)
            self._drop()
            if next_flight is not None:
                answered.append((next_flight.envelope, DeliveryError(f"connection to {self._where()} closed",
                                                                     permanent=False)))
                next_flight = None
        return next_flight, answered

    def _send_plain(self, client: smtplib.SMTP, envelope_from: str,
                    envelope: Envelope) -> dict[str, RecipientResult] | DeliveryError:
        """One message by smtplib's `sendmail`: a server without PIPELINING."""
        recipients = envelope.recipients
        try:
            refused = client.sendmail(envelope_from, recipients, envelope.message,
                                      mail_options=_mail_options(client, envelope_from, recipients, envelope.message))
        except smtplib.SMTPRecipientsRefused as error:
            refused = error.recipients  # every recipient refused at RCPT: still a per-recipient answer
        except smtplib.SMTPSenderRefused as error:
            return _response_error("MAIL FROM refused", error)
        except smtplib.SMTPDataError as error:
            return _response_error("message refused", error)
        except smtplib.SMTPNotSupportedError as error:
            return DeliveryError(f"the SMTP server cannot take this message: {error}", permanent=True)
        except smtplib.SMTPResponseException as error:
            self._drop()
            return _response_error("SMTP error", error)
        except (smtplib.SMTPException, OSError) as error:
            # As in `_exchange`: it is unknown whether the server took it; a retry may duplicate it.
            self._drop()
            return DeliveryError(f"connection to {self._where()} lost: {_describe(error)}", permanent=False)
        finally:
            self._last_used = time.monotonic()
            if self._client is not None and self._client.sock is None:
                self._drop()  # smtplib closes by itself after a 421 (service shutting down)
        log.debug("message_id=%s relayed to %s, refused=%d of %d", envelope.message_id, self._where(), len(refused),
                  len(recipients))
        return _results(recipients, refused)

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


@dataclass(frozen=True)
class _InFlight:
    """A message whose DATA the server answered with 354: its body goes out with the next write."""

    envelope: Envelope
    refused: dict[str, tuple[int, bytes]]  # recipients refused at RCPT


def _commands(client: smtplib.SMTP, envelope_from: str, envelope: Envelope) -> bytes:
    """MAIL, every RCPT and DATA as one pipelined group (RFC 2920); raises SMTPNotSupportedError
    when the message needs SMTPUTF8 and the server lacks it."""
    options = _mail_options(client, envelope_from, envelope.recipients, envelope.message)
    if "SMTPUTF8" in options and not client.has_extn("smtputf8"):
        raise smtplib.SMTPNotSupportedError("SMTPUTF8 not supported by server")
    if client.has_extn("size"):
        options.append(f"SIZE={len(envelope.message)}")
    commands = [f"MAIL FROM:{_quoted(envelope_from)}{''.join(' ' + option for option in options)}",
                *(f"RCPT TO:{_quoted(recipient)}" for recipient in envelope.recipients), "DATA"]
    return "".join(command + "\r\n" for command in commands).encode("utf-8" if "SMTPUTF8" in options else "ascii")


def _envelope_replies(client: smtplib.SMTP, envelope: Envelope) -> _InFlight | dict[str, RecipientResult] | DeliveryError:
    """The replies to `_commands`: the message in flight when DATA got 354, else its result (the
    transaction abandoned or reset, so the connection is ready for the next one)."""
    sender_reply = client.getreply()
    recipient_replies = [client.getreply() for _ in envelope.recipients]
    data_reply = client.getreply()
    refused = {recipient: reply for recipient, reply in zip(envelope.recipients, recipient_replies)
               if reply[0] not in (250, 251)}
    if sender_reply[0] != 250:
        _abandon(client, data_reply)
        return _reply_error("MAIL FROM refused", *sender_reply)
    if len(refused) == len(envelope.recipients):
        _abandon(client, data_reply)
        return _results(envelope.recipients, refused)
    if data_reply[0] != 354:
        _reset(client)
        return _reply_error("message refused", *data_reply)
    return _InFlight(envelope, refused)


def _body_result(client: smtplib.SMTP, in_flight: _InFlight) -> dict[str, RecipientResult] | DeliveryError:
    """The reply to a body just sent: every recipient's result, or why the message was refused."""
    code, reply = client.getreply()
    if code != 250:
        return _reply_error("message refused", code, reply)
    log.debug("message_id=%s relayed, refused=%d of %d", in_flight.envelope.message_id, len(in_flight.refused),
              len(in_flight.envelope.recipients))
    return _results(in_flight.envelope.recipients, in_flight.refused)


def _results(recipients: list[str], refused: dict[str, tuple[int, bytes]]) -> dict[str, RecipientResult]:
    return {recipient: _recipient_result(refused.get(recipient)) for recipient in recipients}


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
    return _reply_error(what, error.smtp_code, error.smtp_error)


def _reply_error(what: str, code: int, reply: bytes | str) -> DeliveryError:
    """4xx: try again later; 5xx: the server will never take it (RFC 5321 section 4.2.1)."""
    return DeliveryError(f"{what}: {code} {_decode(reply)}", permanent=code >= 500)


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
