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

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from maildesk.config import Settings
from maildesk.process import Pipeline, quick_message_id

log = logging.getLogger("maildesk.lmtp")
TEMPORARY_FAILURE = "451 4.3.0 cannot store the message, try again later"
TOO_MUCH_DATA = "552 5.3.4 Error: Too much mail data"
_LINE_START, _IN_LINE, _AFTER_LEADING_DOT = "line start", "in a line", "after a line's first dot"
# Mail data held at once, by the sessions between their DATA and its answer: each holds its
# message (and, while reading it, about as much again). Postfix opens up to 20 LMTP sessions to
# one destination; eight 40 MB mails at once took the daemon to 808 MiB of its unit's 1 GiB.
# Sessions beyond the budget wait before the 354, holding nothing.
DATA_BUDGET_BYTES = 160 * 1024 * 1024
LMTP_IDENT = "maildesk LMTP"  # in the greeting: `maildesk check` tells a running maildesk from another program


class LmtpHandler:
    """aiosmtpd handler: accepts recipients, stores each message, answers per recipient."""

    def __init__(self, pipeline: Pipeline, on_stored: Callable[[int], None], max_message_bytes: int) -> None:
        self.pipeline = pipeline
        self.on_stored = on_stored
        self.data_slots = asyncio.Semaphore(max(1, DATA_BUDGET_BYTES // max_message_bytes))

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
        # A new mail gets its line when processed (one line a mail); a repeat gets none there.
        log.log(logging.DEBUG if stored.new else logging.INFO, "message_id=%s inbox=%d stored from LMTP (%s)",
                quick_message_id(raw) or "-", stored.inbox_id, "new" if stored.new else "already stored")
        try:
            self.on_stored(stored.inbox_id)
        except Exception:  # the row is committed: the daemon's sweep of unprocessed rows finds it
            log.exception("inbox=%d stored but could not be queued for processing", stored.inbox_id)
        return _per_recipient(f"250 2.0.0 stored as inbox {stored.inbox_id}", envelope)


class ChunkedData(SMTP):
    """aiosmtpd's DATA command, read in large chunks instead of line by line: aiosmtpd's
    per-line loop took 24 ms for a mail with a 200 KiB attachment, most of (d)'s tail latency.
    Answers as aiosmtpd does; `too_much_data` is the refusal of a message over the size limit."""

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_message_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:  # aiosmtpd cancels the session's task at EOF
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:
            log.info("connection lost during DATA")
            self._writer.close()
            return
        if content is None:
            await self.push(self.too_much_data())
            self._set_post_data_state()
            return
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    def too_much_data(self) -> str:
        return TOO_MUCH_DATA


class _LmtpProtocol(ChunkedData, LMTP):
    """aiosmtpd's LMTP with chunked DATA, and a refusal of the whole message (too big) repeated
    once per recipient: an LMTP client waits for one reply per accepted RCPT (RFC 2033
    section 4.2) and would otherwise hang until its timeout."""

    # The stream limit of command lines. RFC 5321 section 4.5.3.1.6 caps lines at 1000 octets,
    # but the DATA reader accepts message lines of any length: a bounced customer mail because
    # some client did not fold a long HTML line helps no one. The size cap bounds memory.
    line_length_limit = 1024 * 1024

    async def smtp_DATA(self, arg: str) -> None:
        """DATA once a slot of the handler's memory budget is free (see DATA_BUDGET_BYTES)."""
        async with self.event_handler.data_slots:
            await super().smtp_DATA(arg)

    def too_much_data(self) -> str:
        assert self.envelope is not None
        return _per_recipient(TOO_MUCH_DATA, self.envelope)


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
        self.handler = LmtpHandler(pipeline, on_stored, settings.max_message_bytes)
        self._controller = _LmtpController(
            self.handler, hostname=settings.lmtp_host, port=settings.lmtp_port,
            server_hostname=socket.gethostname(),  # aiosmtpd would call getfqdn() (DNS) per session
            data_size_limit=settings.max_message_bytes,  # also advertised as SIZE in the LHLO reply
            ident=LMTP_IDENT,
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


async def read_message_data(reader: asyncio.StreamReader, size_limit: int | None) -> bytes | None:
    """The message after DATA up to the lone "." line, dot-unstuffed (RFC 5321 section
    4.5.2); None when it is longer than `size_limit` (read to its end all the same, so the
    session stays in step). Reads up to each "<LF>." rather than each line; the byte before
    that LF, which may have come in the previous read, tells a line start from a "." inside
    a line.
    """
    parts: list[bytes] = []
    size = 0
    previous = b"\n"
    state = _LINE_START  # the DATA command's line ending was the last byte read
    while True:
        if state is _AFTER_LEADING_DOT:
            line = await _read_line(reader)
            if line == b"\r\n":
                break
            chunk, state = line, _LINE_START  # that dot was stuffing
        elif state is _LINE_START:
            chunk = await reader.readexactly(1)
            if chunk == b".":
                state = _AFTER_LEADING_DOT
                continue
            state = _IN_LINE
        else:
            try:
                chunk = await reader.readuntil(b"\n.")
            except asyncio.LimitOverrunError as error:  # no "<LF>." in the buffer's first `consumed` bytes
                chunk = await reader.readexactly(error.consumed)
            else:
                if (chunk[-3:-2] if len(chunk) >= 3 else previous) == b"\r":
                    chunk, state = chunk[:-1], _AFTER_LEADING_DOT
        size += len(chunk)
        if size_limit is None or size <= size_limit:
            parts.append(chunk)
        else:
            parts.clear()
        previous = chunk[-1:]
    return b"".join(parts) if size_limit is None or size <= size_limit else None


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """Up to and with the next CRLF, however long the line."""
    pieces = []
    while True:
        try:
            pieces.append(await reader.readuntil(b"\r\n"))
            return b"".join(pieces)
        except asyncio.LimitOverrunError as error:
            pieces.append(await reader.readexactly(error.consumed))


def _per_recipient(status: str, envelope: Envelope) -> str:
    return "\r\n".join([status] * max(len(envelope.rcpt_tos), 1))

