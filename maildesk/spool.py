"""Attachments written where the mail is parsed, then kept or dropped where it is stored.

Flow: parse -> **spool** (beside the parser, in the parse helper for a batch: each attachment is
decoded into a temporary file in the attachments folder while it is hashed) -> examine -> route
-> ... -> store: `keep` renames the file to its content address (`ab/abcdef...`, its SHA-256) in
the mail's transaction, or `discard` removes it once the mail is settled without a ticket. The
main process, the one that holds the database, then only renames files: decoding, hashing and
writing a big attachment (and sending it back from the helper) cost it nothing.

A big base64 attachment arrives as a `core.mail.Base64Body` still inside the raw message and is
decoded a megabyte at a time, so the file is never in memory whole. Temporary files left by a
crash are removed by `sweep` when the daemon starts.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from maildesk.base64_pieces import decoded_pieces
from maildesk.core.mail import Attachment, Base64Body

log = logging.getLogger("maildesk.spool")
INCOMING = ".incoming"  # inside the attachments folder: a rename into place never crosses file systems
STALE_SECONDS = 3600.0  # a temporary file this old belongs to nobody (another daemon's are younger)


@dataclass(frozen=True)
class Spooled:
    """An attachment decoded into a temporary file; the sender's file name is data only."""

    filename: str
    content_type: str
    path: str
    sha256: str
    size: int

    @property
    def stored_name(self) -> str:
        """Where `keep` puts it, relative to the attachments folder: named by its content."""
        return f"{self.sha256[:2]}/{self.sha256}"


def spool(attachments: Iterable[Attachment], attachments_dir: str | Path) -> tuple[Spooled, ...]:
    """Each attachment decoded into a temporary file of its own (none left behind on an error)."""
    incoming = Path(attachments_dir) / INCOMING
    spooled: list[Spooled] = []
    try:
        for attachment in attachments:
            if not spooled:
                incoming.mkdir(parents=True, exist_ok=True)
            spooled.append(_spool_one(attachment, incoming))
    except BaseException:
        discard(spooled)
        raise
    return tuple(spooled)


def _spool_one(attachment: Attachment, incoming: Path) -> Spooled:
    path = incoming / f"{secrets.token_hex(12)}.part"
    payload = attachment.content
    try:
        with path.open("wb") as file:
            if isinstance(payload, bytes):
                file.write(payload)
                digest, size = hashlib.sha256(payload).hexdigest(), len(payload)
            else:
                digest, size = _write_decoded(payload, file)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return Spooled(attachment.filename, attachment.content_type, str(path), digest, size)


def _write_decoded(payload: Base64Body, file: BinaryIO) -> tuple[str, int]:
    """Decode piece by piece while hashing (the SHA-256 and the size); base64 that is not plain
    (stray characters, padding midway) is decoded leniently, as mail clients do, and at once."""
    hasher, size = hashlib.sha256(), 0
    try:
        for piece in decoded_pieces(payload):
            hasher.update(piece)
            file.write(piece)
            size += len(piece)
    except ValueError:
        data = payload.decode()
        file.seek(0)
        file.truncate()
        file.write(data)
        hasher, size = hashlib.sha256(data), len(data)
    return hasher.hexdigest(), size


def keep(spooled: Spooled, attachments_dir: str | Path) -> str:
    """Move the file to its content address (once: the same content is stored once); its name
    relative to the attachments folder. Kept again (a batch handled a second time), it is there."""
    final = Path(attachments_dir) / spooled.stored_name
    if final.exists():
        Path(spooled.path).unlink(missing_ok=True)
        return spooled.stored_name
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(spooled.path, final)
    return spooled.stored_name


def discard(spooled: Iterable[Spooled]) -> None:
    """Remove temporary files not kept (those kept were moved away: nothing to do for them)."""
    for item in spooled:
        Path(item.path).unlink(missing_ok=True)


def sweep(attachments_dir: str | Path, *, now: float | None = None) -> int:
    """Remove temporary files older than STALE_SECONDS, left by a process that died between
    parsing a mail and storing it; how many were removed."""
    incoming = Path(attachments_dir) / INCOMING
    cutoff = (time.time() if now is None else now) - STALE_SECONDS
    removed = 0
    try:
        entries = list(os.scandir(incoming))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.name.endswith(".part") and entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:  # another daemon removed it meanwhile
            continue
    if removed:
        log.info("removed %d temporary attachment file(s) left by an interrupted run", removed)
    return removed
