"""The IMAP poller: transport -> inbox row -> (the pipeline) -> the original filed away.

One poll: SELECT the folder, compare its UIDVALIDITY with the `ImapCursor`, UID SEARCH ALL, and
per batch of `imap_batch_size` UIDs: RFC822.SIZE first (mail over `max_message_bytes` is recorded
as quarantined and never fetched), BODY.PEEK[] for the rest, the raw bytes committed through
`Pipeline.store_many`, the cursor advanced, each row processed, and only then the originals
moved to the processed or the quarantine folder. A crash anywhere leaves the message in the
folder, so it is simply seen again and the pipeline recognises it by its SHA-256: we scan every
UID rather than trusting the cursor, which only orders the logs. Between polls the poller sits
in IDLE (RFC 2177) or sleeps `imap_poll_seconds`.

The only module that imports imapclient; its types and exceptions stop here (`ImapError`).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

from imapclient import DELETED, IMAPClient, SocketTimeout
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlmodel import col

from maildesk import store
from maildesk.config import Settings
from maildesk.models import ImapCursor, InboxItem, utcnow
from maildesk.process import Pipeline, Prepared, chunks_by_size, groups

log = logging.getLogger("maildesk.imap")

IDLE_REISSUE_SECONDS = 25 * 60  # RFC 2177: a server may end an IDLE after 29 minutes
IDLE_CHECK_SECONDS = 1.0  # one idle_check blocks this long: it bounds how fast a stop is noticed
DEAD_AFTER_EARLY_EMPTIES = 3  # a closed socket answers idle_check with [] at once, again and again
CONNECT_TIMEOUT_SECONDS = 15.0
READ_TIMEOUT_SECONDS = 120.0
FETCH_CHUNK_BYTES = 32 * 1024 * 1024  # one BODY[] FETCH holds at most this much (or one message)
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
SOURCE = "imap"
# inbox state -> where the original goes; states not listed stay in the folder and are seen again
FILING = {"processed": "processed", "held": "processed", "ignored": "processed", "quarantined": "quarantine"}
# OSError covers socket.timeout, refused connections and TLS errors
CONNECTION_ERRORS = (IMAPClientError, OSError)

ProgressCallback = Callable[[int, int], None]


class ImapError(RuntimeError):
    """The IMAP server could not be reached, dropped the session or refused a command.

    str() names the server and the reason, never the password. `run_forever` answers it by
    reconnecting with backoff; `poll_once` lets it through to the caller.
    """


@dataclass(frozen=True)
class PollReport:
    """What one poll did; `left` counts messages left in the folder for a later poll (new or failed)."""

    fetched: int = 0
    stored_new: int = 0
    processed: int = 0
    quarantined: int = 0
    moved: int = 0
    left: int = 0

    def __add__(self, other: PollReport) -> PollReport:
        return PollReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class _Fetched:
    """A batch as the server gave it: each UID's size, the Message-ID of each oversize mail
    (never fetched), the bodies of the first chunk of the rest, and the chunks still to fetch."""

    sizes: dict[int, int]
    oversize: dict[int, str]
    first_chunk: dict[int, bytes]
    later_chunks: list[list[int]]


@dataclass(frozen=True)
class _Saved:
    entries: dict[int, int]  # UID -> inbox id
    fetched: int
    stored_new: int


class ImapPoller:
    """Fetches, stores, processes and files the mail of one IMAP folder; one connection, one thread."""

    def __init__(self, settings: Settings, pipeline: Pipeline, *, stop_event: threading.Event | None = None,
                 on_progress: ProgressCallback | None = None, max_backoff: float = MAX_BACKOFF_SECONDS,
                 idle_check_seconds: float = IDLE_CHECK_SECONDS,
                 idle_reissue_seconds: float = IDLE_REISSUE_SECONDS) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.stop_event = stop_event or threading.Event()
        self.on_progress = on_progress
        self.max_backoff = max_backoff
        self.idle_check_seconds = idle_check_seconds
        self.idle_reissue_seconds = idle_reissue_seconds
        self.endpoint = endpoint(settings)
        self._client: IMAPClient | None = None
        self._capabilities: frozenset[bytes] = frozenset()
        self._known: dict[tuple[int, int], int] = {}  # (uidvalidity, uid) -> inbox id: no second FETCH
        self._runner: int | None = None

    # ---- one poll -------------------------------------------------------------------------

    def poll_once(self) -> PollReport:
        """Connect if needed and handle everything in the folder now, batch by batch.

        While the pipeline works on one batch, a thread of our own ("imap-io") fetches the next
        one and files the one before: the server's time overlaps ours. It alone talks to the
        server meanwhile (imaplib is not thread-safe), in the order the commands are given, so a
        batch is still filed only after its commit.
        """
        try:
            client = self._connection()
            uidvalidity, uids = self._scan(client)
            batch = self.settings.imap_batch_size
            batches = [uids[start:start + batch] for start in range(0, len(uids), batch)]
            done = 0

            def processed(count: int) -> None:  # after each group's commit: the sender has new work
                nonlocal done
                done += count
                if self.on_progress:
                    self.on_progress(min(done, len(uids)), len(uids))

            io = ThreadPoolExecutor(1, thread_name_prefix="imap-io")
            try:
                return self._batches(io, client, uidvalidity, batches, processed)
            finally:
                io.shutdown(wait=True, cancel_futures=True)  # what is under way ends before a reconnect
        except CONNECTION_ERRORS as error:
            self._drop()
            raise ImapError(f"IMAP {self.endpoint}: {describe(error, self.settings)}") from error

    def _scan(self, client: IMAPClient) -> tuple[int, list[int]]:
        """The folder's UIDVALIDITY (checked against the cursor) and all its UIDs, ascending.

        All of them, not only those above the cursor: whatever is still in the folder was not
        filed yet (a crash, a failed message), and the pipeline's SHA-256 makes a second look harmless.
        """
        # imaplib would keep every EXPUNGE of a long session (its own select() starts afresh too)
        client._imap.untagged_responses.clear()
        uidvalidity = int(client.select_folder(self.settings.imap_folder)[b"UIDVALIDITY"])
        announced_new_mail(client)  # SELECT's own EXISTS: what the SEARCH below will see anyway
        last_uid = self._check_cursor(uidvalidity)
        uids = sorted(int(uid) for uid in client.search(["ALL"]))
        present = set(uids)
        self._known = {key: inbox_id for key, inbox_id in self._known.items()
                       if key[0] == uidvalidity and key[1] in present}
        if uids:
            log.info("%d message(s) in %s, %d above the last UID seen (%d)", len(uids),
                     self.settings.imap_folder, sum(uid > last_uid for uid in uids), last_uid)
        return uidvalidity, uids

    def _batches(self, io: ThreadPoolExecutor, client: IMAPClient, uidvalidity: int, batches: list[list[int]],
                 after_group: Callable[[int], None]) -> PollReport:
        """Each batch stored (commit), the cursor advanced, each row processed, then the originals
        filed; the next batch is fetched meanwhile."""
        filed: list[tuple[_Saved, int, dict[str, Future[int]]]] = []
        fetching = io.submit(self._fetch, client, batches[0], self._known_of(uidvalidity, batches[0])) \
            if batches else None
        for index in range(len(batches)):
            if self.stop_event.is_set() or fetching is None:
                break
            fetched = fetching.result()
            fetching = (io.submit(self._fetch, client, batches[index + 1],
                                  self._known_of(uidvalidity, batches[index + 1]))
                        if index + 1 < len(batches) else None)
            saved = self._save(io, client, uidvalidity, fetched)
            processed, filing = self._process(saved.entries, fetched.sizes, after_group)
            filed.append((saved, processed, {folder: io.submit(self._move, client, folder_uids, folder)
                                             for folder, folder_uids in filing.items()}))
        report = PollReport()
        for saved, processed, moving in filed:
            moved = {folder: future.result() for folder, future in moving.items()}
            total_moved = sum(moved.values())
            report += PollReport(saved.fetched, saved.stored_new, processed,
                                 moved.get(self.settings.imap_quarantine_folder, 0), total_moved,
                                 left=len(saved.entries) - total_moved)
        return report

    def _known_of(self, uidvalidity: int, uids: list[int]) -> frozenset[int]:
        """The UIDs of `uids` stored already: their bodies need not be fetched again."""
        return frozenset(uid for uid in uids if (uidvalidity, uid) in self._known)

    def _fetch(self, client: IMAPClient, uids: list[int], known: frozenset[int]) -> _Fetched:
        """In the I/O thread: sizes first, so that oversize mail is never downloaded (its
        Message-ID from the ENVELOPE instead), then the bodies of the first chunk of the rest
        (BODY.PEEK[]: no \\Seen flag)."""
        sizes = {uid: int(data[b"RFC822.SIZE"]) for uid, data in client.fetch(uids, ["RFC822.SIZE"]).items()
                 if b"RFC822.SIZE" in data}  # a UID missing here was expunged by someone else meanwhile
        limit = self.settings.max_message_bytes
        oversize = {uid: envelope_message_id(client, uid) for uid, size in sizes.items()
                    if size > limit and uid not in known}
        chunks = list(chunks_by_size([uid for uid in sizes if uid not in known and uid not in oversize], sizes,
                                     FETCH_CHUNK_BYTES))
        return _Fetched(sizes, oversize, fetch_bodies(client, chunks[0]) if chunks else {}, chunks[1:])

    def _save(self, io: ThreadPoolExecutor, client: IMAPClient, uidvalidity: int, fetched: _Fetched) -> _Saved:
        """Every UID of the batch as a committed inbox row; only then the cursor moves on. Chunks
        of bodies after the first are fetched while the one before is stored."""
        entries = {uid: self._known[(uidvalidity, uid)] for uid in fetched.sizes if (uidvalidity, uid) in self._known}
        limit = self.settings.max_message_bytes
        for uid, message_id in fetched.oversize.items():
            entries[uid] = record_oversize(self.pipeline.engine, uidvalidity=uidvalidity, uid=uid,
                                           size=fetched.sizes[uid], limit=limit, message_id=message_id)
        count = stored_new = 0
        bodies: dict[int, bytes] = fetched.first_chunk
        for later in [*fetched.later_chunks, None]:
            upcoming = io.submit(fetch_bodies, client, later) if later else None
            if bodies:  # none when every mail of the batch was known or oversize
                got = list(bodies)
                stored = self.pipeline.store_many([bodies[uid] for uid in got], SOURCE)
                count, stored_new = count + len(got), stored_new + sum(item.new for item in stored)
                entries.update(zip(got, (item.inbox_id for item in stored)))
            bodies = upcoming.result() if upcoming else {}
        self._known.update({(uidvalidity, uid): inbox_id for uid, inbox_id in entries.items()})
        if fetched.sizes:
            self._advance_cursor(uidvalidity, max(fetched.sizes))
        return _Saved(entries, count, stored_new)

    def _process(self, entries: dict[int, int], sizes: dict[int, int],
                 after_group: Callable[[int], None]) -> tuple[int, dict[str, list[int]]]:
        """Run the pipeline on the stored rows; the folder each original belongs in, by its final state.

        Rows go to the pipeline in groups (one transaction each, for speed on a backlog; bounded
        in rows and in bytes of raw mail, by the sizes the server gave), and
        each group is prepared (claimed and handed to the parser) before the one ahead of it is
        finished, so that parsing and processing overlap; `after_group(rows)` follows each
        group's commit. A stop is honoured between groups; what is not filed yet is stored and
        will be seen again.
        """
        filing: dict[str, list[int]] = {}
        ahead: deque[tuple[list[int], Prepared]] = deque()  # at most two: the group to finish, the next one
        processed = 0
        try:
            for group in groups(sorted(entries), sizes):
                if self.stop_event.is_set():
                    break
                ahead.append((group, self.pipeline.prepare([entries[uid] for uid in group])))
                if len(ahead) == 2:
                    processed += self._finish(*ahead.popleft(), entries, filing, after_group)
            while ahead:  # claimed already: finished even after a stop
                processed += self._finish(*ahead.popleft(), entries, filing, after_group)
        finally:
            for _group, prepared in ahead:  # a group failed: the one prepared behind it goes back at once
                self.pipeline.release(prepared)
        return processed, filing

    def _finish(self, group: list[int], prepared: Prepared, entries: dict[int, int],
                filing: dict[str, list[int]], after_group: Callable[[int], None]) -> int:
        """Process a prepared group and note each UID's folder; how many rows were ours."""
        folders = {"processed": self.settings.imap_processed_folder,
                   "quarantine": self.settings.imap_quarantine_folder}
        processed = 0
        for uid, outcome in zip(group, self.pipeline.finish(prepared)):
            # None: already handled (a re-delivery, a restart) or claimed by another worker
            processed += outcome is not None
            state = outcome.state if outcome is not None else self.pipeline.state_of(entries[uid])[0]
            if state in FILING:
                filing.setdefault(folders[FILING[state]], []).append(uid)
        after_group(len(group))
        return processed

    def _move(self, client: IMAPClient, uids: list[int], folder: str) -> int:
        """MOVE (RFC 6851) when offered, else COPY + \\Deleted + (UID) EXPUNGE; creates a vanished folder."""
        try:
            self._move_now(client, uids, folder)
        except IMAPClientError as error:
            if isinstance(error, IMAPClientAbortError) or "TRYCREATE" not in str(error).upper():
                raise
            client.create_folder(folder)
            self._move_now(client, uids, folder)
        log.info("moved %d message(s) to %s: UIDs %s", len(uids), folder, uid_ranges(uids))
        return len(uids)

    def _move_now(self, client: IMAPClient, uids: list[int], folder: str) -> None:
        if b"MOVE" in self._capabilities:
            client.move(uids, folder)
            return
        client.copy(uids, folder)
        client.add_flags(uids, [DELETED])
        if b"UIDPLUS" in self._capabilities:
            client.uid_expunge(uids)  # RFC 4315: removes only these, not others' \Deleted mail
        else:
            client.expunge()

    # ---- the cursor ---------------------------------------------------------------------

    def _check_cursor(self, uidvalidity: int) -> int:
        """The last UID seen; a new UIDVALIDITY (RFC 3501 2.3.1.1) voids every UID, so the cursor restarts."""
        folder = self.settings.imap_folder
        with store.transaction(self.pipeline.engine) as session:
            cursor = session.get(ImapCursor, folder)
            if cursor is None:
                session.add(ImapCursor(folder=folder, uidvalidity=uidvalidity, last_uid=0))
                return 0
            if cursor.uidvalidity != uidvalidity:
                log.warning("uidvalidity changed for folder %s on %s: %d -> %d; reading every message again "
                            "(mail already stored is recognised by its content)", folder, self.endpoint,
                            cursor.uidvalidity, uidvalidity)
                cursor.uidvalidity, cursor.last_uid = uidvalidity, 0
                session.add(cursor)
            return cursor.last_uid

    def _advance_cursor(self, uidvalidity: int, uid: int) -> None:
        """Called only after the batch's raw bytes are committed; never moves backwards."""
        with store.transaction(self.pipeline.engine) as session:
            session.execute(update(ImapCursor).where(col(ImapCursor.folder) == self.settings.imap_folder,
                                                     col(ImapCursor.uidvalidity) == uidvalidity,
                                                     col(ImapCursor.last_uid) < uid).values(last_uid=uid))

    # ---- the loop -----------------------------------------------------------------------

    def run_forever(self) -> None:
        """Poll, then wait for mail, until `stop_event`; any failure means reconnect with backoff.

        The backoff doubles from 1 s to `max_backoff` and restarts after a successful poll. A
        database outage or a bug is logged and retried the same way: the poller never dies.
        """
        self._runner = threading.get_ident()
        delay = FIRST_BACKOFF_SECONDS
        announced = False
        try:
            while not self.stop_event.is_set():
                try:
                    report = self.poll_once()
                    delay = FIRST_BACKOFF_SECONDS
                    announced = self._wait_for_mail(report, after_announcement=announced)
                    continue
                except ImapError as error:
                    log.warning("%s; reconnecting in %.0f s", error, delay)
                except Exception:
                    log.exception("IMAP poll of %s failed; retrying in %.0f s", self.endpoint, delay)
                self._drop()
                self.stop_event.wait(delay)
                delay = min(delay * 2, self.max_backoff)
        finally:
            self._runner = None
            self.close()

    def _wait_for_mail(self, report: PollReport, *, after_announcement: bool = False) -> bool:
        """IDLE when the server offers it, else sleep; mail left behind (failed) is retried after a poll interval.

        Returns True when the server had already announced new mail, so the caller polls at
        once. After such a poll found nothing, an announcement is not trusted again (no busy loop
        on a server that sends EXISTS for other reasons).
        """
        if self.stop_event.is_set():
            return False
        announced = announced_new_mail(self._connection())
        if announced and not (after_announcement and report.fetched == report.moved == 0):
            return True
        if b"IDLE" not in self._capabilities:
            self.stop_event.wait(self.settings.imap_poll_seconds)
            return False
        self._idle(self.settings.imap_poll_seconds if report.left else self.idle_reissue_seconds)
        return False

    def _idle(self, limit: float) -> None:
        """IDLE until new mail, `limit` seconds or a stop; a dead server shows as BYE or as early empty answers.

        idle_check on a closed socket does not raise: it returns [] at once, again and again. A live
        server with nothing to say makes us wait the whole timeout, so N quick empty answers in a
        row mean the connection is gone.
        """
        client = self._connection()
        try:
            client.idle()
            log.debug("idling on %s %s", self.endpoint, self.settings.imap_folder)
            started, early = time.monotonic(), 0
            # Mail that arrived between our SEARCH and the IDLE is announced right with the server's
            # "+ idling": imaplib then holds that EXISTS in its own buffers (untagged responses, or
            # the socket file's read buffer), where idle_check, which polls the socket, never looks.
            while not (announced_new_mail(client) or unread_input(client)) and not self.stop_event.is_set():
                if time.monotonic() - started >= limit:
                    log.info("re-issuing IDLE on %s after %.0f s", self.endpoint, time.monotonic() - started)
                    break
                asked = time.monotonic()
                responses = client.idle_check(timeout=self.idle_check_seconds)
                bye = [response for response in responses if response and response[0] == b"BYE"]
                if bye:
                    raise ImapError(f"IMAP {self.endpoint} ended the session: {_text_of(bye[0][1:])}")
                if any(len(response) > 1 and response[1] in (b"EXISTS", b"RECENT") for response in responses):
                    break
                if responses or time.monotonic() - asked >= self.idle_check_seconds / 2:
                    early = 0
                    continue
                early += 1
                if early >= DEAD_AFTER_EARLY_EMPTIES:
                    raise ImapError(f"IMAP {self.endpoint}: the connection is closed (IDLE answers nothing at once)")
            client.socket().settimeout(READ_TIMEOUT_SECONDS)  # idle_check leaves the socket without a timeout
            client.idle_done()
        except CONNECTION_ERRORS as error:
            self._drop()
            raise ImapError(f"IMAP {self.endpoint} in IDLE: {describe(error, self.settings)}") from error
        except ImapError:
            self._drop()
            raise

    # ---- the connection -----------------------------------------------------------------

    def _connection(self) -> IMAPClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> IMAPClient:
        """Log in, learn the capabilities (MOVE shows only after login) and create missing folders."""
        client = open_client(self.settings)
        try:
            self._capabilities = frozenset(client.capabilities())
            for folder in (self.settings.imap_processed_folder, self.settings.imap_quarantine_folder):
                if not client.folder_exists(folder):
                    client.create_folder(folder)
                    log.info("created IMAP folder %s on %s", folder, self.endpoint)
        except BaseException:
            _shutdown_quietly(client)
            raise
        shown = " ".join(sorted(c.decode() for c in self._capabilities & {b"IDLE", b"MOVE", b"UIDPLUS"}))
        log.info("connected to IMAP %s as %s (%s)", self.endpoint, self.settings.imap_user, shown or "no IDLE/MOVE")
        return client

    def _drop(self) -> None:
        """Forget a broken connection without talking to it (a LOGOUT could wait for a dead server)."""
        client, self._client = self._client, None
        if client is not None:
            _shutdown_quietly(client)

    def close(self) -> None:
        """Log out. Called from another thread while `run_forever` runs, it asks the loop to stop,
        and the loop logs out itself within about `idle_check_seconds`."""
        if self._runner is not None and self._runner != threading.get_ident():
            self.stop_event.set()
            return
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.logout()
        except (*CONNECTION_ERRORS, ValueError):
            _shutdown_quietly(client)
        log.info("disconnected from IMAP %s", self.endpoint)


def open_client(settings: Settings, *, connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> IMAPClient:
    """A logged-in client; TLS unless MAILDESK_IMAP_SSL=false (port 0 means 993, or 143 without TLS)."""
    client = IMAPClient(settings.imap_host, port=settings.imap_port or None, ssl=settings.imap_ssl,
                        timeout=SocketTimeout(connect=connect_timeout, read=READ_TIMEOUT_SECONDS))
    _quiet_imaplib(client)
    try:
        client.login(settings.imap_user, settings.imap_password)
    except BaseException:
        _shutdown_quietly(client)
        raise
    return client


def _quiet_imaplib(client: IMAPClient) -> None:
    """imapclient sets imaplib's debug level to 5 and hands its messages to the
    `imapclient.imaplib` logger, so imaplib formats every response, each fetched mail
    included, with repr() for the logger to drop: 7 % of the poller's time in a backlog.
    The level stays 5 only when that logger writes DEBUG lines (imapclient's redaction of
    LOGIN applies then, as before)."""
    if not logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG):
        client._imap.debug = 0


def check_connection(settings: Settings) -> str | None:
    """For `maildesk check`: None when we can log in and the folder exists, else what failed (no password)."""
    where = endpoint(settings)
    try:
        client = open_client(settings, connect_timeout=10)
    except LoginError:
        return f"IMAP login failed for user {settings.imap_user} at {where}"
    except CONNECTION_ERRORS as error:
        return f"cannot connect to IMAP {where}: {describe(error, settings)}"
    try:
        exists = client.folder_exists(settings.imap_folder)
        client.logout()
    except CONNECTION_ERRORS as error:
        _shutdown_quietly(client)
        return f"IMAP {where} dropped the session: {describe(error, settings)}"
    if not exists:
        return f"IMAP folder {settings.imap_folder!r} does not exist for user {settings.imap_user} at {where}"
    return None


def record_oversize(engine: Engine, *, uidvalidity: int, uid: int, size: int, limit: int, message_id: str) -> int:
    """An inbox row for mail too big to fetch: quarantined at once, so an admin sees it and why.

    The SHA-256 column holds `oversize:{uidvalidity}:{uid}` (there are no bytes to hash), which
    keeps a second poll from adding a second row.
    """
    key = f"oversize:{uidvalidity}:{uid}"
    with store.transaction(engine) as session:
        existing = session.exec(select(InboxItem.id).where(InboxItem.sha256 == key)).first()  # type: ignore[call-overload]
        if existing:
            return int(existing[0])
        reason = f"message of {size} bytes exceeds MAILDESK_MAX_MESSAGE_BYTES ({limit})"
        item = InboxItem(received_at=utcnow(), source=SOURCE, sha256=key, message_id=message_id[:1000], size=size,
                         state="quarantined", reason=reason)
        session.add(item)
        session.flush()
        assert item.id is not None
    log.warning("message_id=%s inbox=%d outcome=quarantined reason=%r (UID %d, not fetched)", message_id or "-",
                item.id, reason, uid)
    return item.id


def announced_new_mail(client: IMAPClient) -> bool:
    """Whether the server announced new mail (EXISTS) alongside an earlier command; forgets it.

    Mail that arrives while our SEARCH runs is announced at the end of that command, and
    imapclient files such untagged responses in imaplib's `untagged_responses`, where
    idle_check never looks: without this check it would wait for the next IDLE re-issue.
    (RECENT is no sign: Dovecot sends `* 0 RECENT` after a MOVE.)
    """
    return bool(client._imap.untagged_responses.pop("EXISTS", None))


def unread_input(client: IMAPClient) -> bool:
    """Whether the server's words already sit in imaplib's read buffer (read with an earlier line)."""
    sock = client.socket()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return bool(client._imap.file.peek(1))  # the buffer's bytes, or one non-blocking read
    except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):  # nothing there (TLS says so its own way)
        return False
    finally:
        sock.settimeout(timeout)


def envelope_message_id(client: IMAPClient, uid: int) -> str:
    """The Message-ID from the server's ENVELOPE (cheap: no body is sent); '' when it has none."""
    try:
        envelope = client.fetch([uid], ["ENVELOPE"]).get(uid, {}).get(b"ENVELOPE")
    except (IMAPClientAbortError, OSError):
        raise
    except Exception:  # an odd ENVELOPE must not stop the poll: the Message-ID is only for humans
        log.debug("no ENVELOPE for UID %d", uid, exc_info=True)
        return ""
    value = getattr(envelope, "message_id", None)
    return value.decode("ascii", "replace") if isinstance(value, bytes) else ""


def fetch_bodies(client: IMAPClient, uids: list[int]) -> dict[int, bytes]:
    """The raw bytes of these messages, in the order asked (BODY.PEEK[]: no \\Seen flag); a UID
    expunged meanwhile is missing."""
    found = client.fetch(uids, ["BODY.PEEK[]"])
    return {uid: found[uid][b"BODY[]"] for uid in uids if uid in found and found[uid].get(b"BODY[]") is not None}


def uid_ranges(uids: list[int]) -> str:
    """UIDs as an IMAP sequence set for logs: [1, 2, 3, 7] -> '1:3,7'."""
    runs: list[list[int]] = []
    for uid in sorted(uids):
        if runs and runs[-1][1] == uid - 1:
            runs[-1][1] = uid
        else:
            runs.append([uid, uid])
    return ",".join(str(first) if first == last else f"{first}:{last}" for first, last in runs)


def endpoint(settings: Settings) -> str:
    """host:port as the admin should read it in messages (the default port filled in)."""
    port = settings.imap_port or (993 if settings.imap_ssl else 143)
    return f"{settings.imap_host}:{port}"


def describe(error: BaseException, settings: Settings) -> str:
    """The first line of an error, with the password taken out should a server echo it."""
    text = (str(error).splitlines() or [""])[0] or type(error).__name__
    if settings.imap_password:
        text = text.replace(settings.imap_password, "***")
    return text


def _text_of(atoms: tuple[object, ...]) -> str:
    """An untagged response as imapclient splits it, back to the words a person reads."""
    return " ".join(atom.decode("utf-8", "replace") if isinstance(atom, bytes) else str(atom) for atom in atoms)


def _shutdown_quietly(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except (*CONNECTION_ERRORS, ValueError, AttributeError):
        pass
