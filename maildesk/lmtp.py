"""The LMTP listener: a transport at the start of the flow (LMTP -> inbox row -> pipeline).

The MTA (Postfix, Dovecot's LDA, ...) hands each message over by LMTP (RFC 2033). Like
Mailman 3's LMTP runner, the listener only saves and answers: the raw bytes are committed
as an inbox row (`Pipeline.store_raw`) before the "250" goes out, one status line per
recipient, and the inbox id is handed to `on_stored` so the daemon processes it in its
own thread after the MTA has its answer. When the row cannot be saved every recipient
gets "451" and the MTA keeps the message and retries: nothing is acknowledged unsaved.
aiosmtpd is imported here only.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from maildesk.config import Settings
from maildesk.process import Pipeline, quick_message_id

log = logging.getLogger("maildesk.lmtp")
TEMPORARY_FAILURE = "451 4.3.0 cannot store the message, try again later"
# aiosmtpd's own answers to DATA that break the per-recipient rule of RFC 2033 section 4.2.
_WHOLE_MESSAGE_ERRORS = ("552 Error: Too much mail data", "500 Line too long")


class LmtpHandler:
    """aiosmtpd handler: accepts recipients, stores each message, answers per recipient."""

    def __init__(self, pipeline: Pipeline, on_stored: Callable[[int], None]) -> None:
        self.pipeline = pipeline
        self.on_stored = on_stored

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        """Every recipient is accepted: the support address may have aliases the MTA knows
        and we do not, and the MTA already decided this mail is ours."""
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Commit the raw bytes, then answer once per recipient (RFC 2033 section 4.2)."""
        raw = envelope.original_content or b""
        try:
            # The database call runs in a worker thread so other LMTP sessions keep moving.
            stored = await asyncio.to_thread(self.pipeline.store_raw, raw, "lmtp")
        except Exception:
            log.exception("cannot store a %d-byte message from %s; answered 451", len(raw), envelope.mail_from)
            return _per_recipient(TEMPORARY_FAILURE, envelope)
        log.info("message_id=%s inbox=%d stored from LMTP (%s)", quick_message_id(raw) or "-", stored.inbox_id,
                 "new" if stored.new else "already stored")
        try:
            self.on_stored(stored.inbox_id)
        except Exception:  # the row is committed: the daemon's sweep of unprocessed rows finds it
            log.exception("inbox=%d stored but could not be queued for processing", stored.inbox_id)
        return _per_recipient(f"250 2.0.0 stored as inbox {stored.inbox_id}", envelope)


class _LmtpProtocol(LMTP):
    """aiosmtpd's LMTP, with its own whole-message refusals after DATA (too big, line too
    long) repeated once per recipient: an LMTP client waits for one reply per accepted
    RCPT (RFC 2033 section 4.2) and would otherwise hang until its timeout."""

    # RFC 5321 section 4.5.3.1.6 caps lines at 1000 octets, and aiosmtpd answers a longer one
    # with a permanent 500: a bounced customer mail because some client did not fold a long
    # HTML line. Accept long lines; the message size cap still bounds memory.
    line_length_limit = 1024 * 1024

    async def push(self, status: Any) -> None:
        if (isinstance(status, str) and status.startswith(_WHOLE_MESSAGE_ERRORS) and self.envelope is not None
                and len(self.envelope.rcpt_tos) > 1):
            status = "\r\n".join([status] * len(self.envelope.rcpt_tos))
        await super().push(status)


class _LmtpController(Controller):
    """aiosmtpd's threaded Controller serving LMTP instead of SMTP."""

    def factory(self) -> SMTP:
        return _LmtpProtocol(self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        """With port 0 the OS picks a port: learn it before the readiness probe connects."""
        if self.server is not None and self.server.sockets:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class LmtpServer:
    """The listener the daemon starts: an event-loop thread on settings.lmtp_host:lmtp_port."""

    def __init__(self, settings: Settings, pipeline: Pipeline, on_stored: Callable[[int], None]) -> None:
        self.settings = settings
        self.handler = LmtpHandler(pipeline, on_stored)
        self._controller = _LmtpController(
            self.handler, hostname=settings.lmtp_host, port=settings.lmtp_port,
            server_hostname=socket.gethostname(),  # aiosmtpd would call getfqdn() (DNS) per session
            data_size_limit=settings.max_message_bytes,  # also advertised as SIZE in the LHLO reply
            decode_data=False, enable_SMTPUTF8=True)

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when lmtp_port is 0)."""
        return int(self._controller.port)

    def start(self) -> None:
        """Listen; returns once the server answers (raises if the port cannot be bound)."""
        self._controller.start()
        log.info("LMTP listener on %s:%d", self.settings.lmtp_host, self.port)

    def stop(self) -> None:
        """Stop listening; a session cut mid-message gets no 250, so its MTA retries."""
        self._controller.stop(no_assert=True)
        log.info("LMTP listener stopped")


def _per_recipient(status: str, envelope: Envelope) -> str:
    return "\r\n".join([status] * max(len(envelope.rcpt_tos), 1))

