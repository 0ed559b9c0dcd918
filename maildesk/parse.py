"""Raw bytes -> `InboundMail`: the parse stage.

Flow: transport -> inbox -> **parse** -> route -> commands -> workflow -> store -> notify ->
outbox -> SMTP. The stdlib parses the bytes once (compat32 policy, through `mime_tree`) and
the mail is built from that tree, decoding only what the pipeline uses:
- every header is decoded here from the stdlib's raw values, trying utf-8 then windows-1257
  (iso-8859-13 agrees with windows-1257 on every Latvian letter): raw 8-bit bytes are common
  from our customers ("lietotājs" in raw windows-1257);
- body parts without a charset, or with a wrong one, fall back to utf-8, then windows-1257;
- big base64 leaf parts (attachments) are cut out of the bytes before the stdlib sees them:
  its feed parser splits a body into lines and joins them again (3 copies of a 25 MiB file,
  and most of the parse time of a mail with a 200 KiB attachment). Their text stays in the
  raw bytes (`core.mail.Base64Body`) and is decoded once, where it is stored, in chunks.

mail-parser (`mailparser.parse_from_bytes`) used to be the front door. Its full `parse()` walks
every part, re-encodes attachments to base64 and builds JSON views we never read: 1.45 ms of the
5.1 ms per benchmark-corpus mail, on top of the stdlib's parse it runs anyway. Only its hardened
address-list parser (`get_addresses`), its date parser and its filename decoding are still used,
called directly on the header values: they cost microseconds. What its `parse()` did and is no
longer done: Received-header diagnostics ("MIME: ReceivedHeaderDefect"), its own body charset
defect ("MIME: CharsetDecodeDefect"; ours say more), recovering parts from an epilogue after a
missing start boundary, and random names for unnamed rtf/attachment parts (they get "").

Anything that cannot be understood becomes `ParseError`; the caller quarantines the message.
"""

from __future__ import annotations

import codecs
import functools
import os
import re
from datetime import datetime
from email._encoded_words import decode_b
from email.errors import HeaderParseError
from email.header import Header, decode_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import Final, NamedTuple

from mailparser.dates import date_diagnostics, parse_mail_date
from mailparser.utils import decode_header_part, get_addresses, mime_header_view

from maildesk.bounce_report import delivery_report
from maildesk.core.mail import Attachment, Base64Body, InboundMail, lenient_base64
from maildesk.mime_tree import parse_bytes
from maildesk.quotes import new_text

FALLBACK_CHARSETS: Final = ("utf-8", "windows-1257")
# Charsets that decode any byte string, so a wrong label never fails: valid non-ASCII UTF-8
# under such a label is UTF-8 mislabelled (a real single-byte text almost never forms it).
_SINGLE_BYTE: Final = frozenset(
    {"ascii", "iso8859-1", "cp1252", "cp1257", "iso8859-13", "iso8859-4", "iso8859-15", "iso8859-2"}
)
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_HEADER_LINE: Final = re.compile(rb"^(?:From |[!-9;-~]+[ \t]*:)")
_BLANK_LINE: Final = re.compile(rb"\r?\n\r?\n")
_HEADER_SCAN: Final = 65536
_ANGLE_ID: Final = re.compile(r"<[^<>]*>")
_FOLDING: Final = re.compile(r"\r?\n(?=[ \t])")
_LOOSE_ADDRESS: Final = re.compile(r"[^\s<>()\[\]@,;:\"']+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_CONTROL: Final = re.compile(r"[\r\n\x00]")
REPLACEMENT: Final = "\ufffd"
_ADDRESS_HEADERS: Final = ("from", "to", "cc")
# mail-parser's address headers: a malformed one is reported as "MIME: AddressHeaderDefect".
_CHECKED_ADDRESS_HEADERS: Final = frozenset({"bcc", "cc", "delivered-to", "from", "reply-to", "to"})
# A base64 leaf body at least this long is left in the raw bytes (see the module docstring).
CUT_MIN_BYTES: Final = 16384
_CTE: Final = re.compile(rb"^content-transfer-encoding[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)
# MIME limits, checked on the raw bytes before mail-parser and the stdlib build a tree: the
# stdlib recurses once per nesting level and builds an object per part, so 2,000 levels or
# 10,000 parts cost seconds and memory for a mail no person writes. Real mail nests < 10 deep.
MAX_MIME_DEPTH: Final = 50
MAX_MIME_PARTS: Final = 1000
# A References header names every mail of a thread; routing needs the root and the newest few
# (RFC 5322 3.6.4), and each one kept costs a database lookup and a word in our own replies.
MAX_REFERENCES: Final = 50
# Address headers parsed by mail-parser and remembered (`_ascii_addresses`): 4096 x 1000 characters at most.
ADDRESS_CACHE: Final = 4096
ADDRESS_CACHE_CHARACTERS: Final = 1000
# The stdlib's decode_header is quadratic in the number of encoded-words (list.pop(0)): 20,000
# in one Subject cost 3 s, 40,000 cost 12 s; 5,000 cost 0.2 s. Real subjects have a few dozen
# (flanker's long-header fixture, 3,302).
MAX_ENCODED_WORDS: Final = 5000
_HEADER_END: Final = re.compile(rb"\r?\n\r?\n")
_EMPTY_HEADER: Final = re.compile(rb"\r?\n")
_CONTENT_TYPE: Final = re.compile(rb"^content-type[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.IGNORECASE | re.MULTILINE)
_BOUNDARY: Final = re.compile(rb"\bboundary[ \t]*=[ \t]*(?:\"([^\"\r\n]*)\"|([^\s;]+))", re.IGNORECASE)
_CONTAINER: Final = re.compile(rb"^[ \t]*(multipart|message)[ \t]*/[ \t]*([a-z0-9.+-]+)", re.IGNORECASE)


class ParseError(Exception):
    """Raised when raw bytes cannot be understood as a mail at all (no usable From, not RFC 5322,
    or the parser failing on it); `str(error)` is the reason shown to the operator."""


def parse_mail(raw: bytes) -> InboundMail:
    """Parse one raw message; raises only `ParseError`."""
    cuts = _refuse_non_mail(raw)
    try:
        return _inbound(raw, *_tree(raw, cuts))
    except ParseError:
        raise
    except Exception as error:  # hostile input makes the email package raise many kinds
        raise ParseError(f"the parser could not read it: {type(error).__name__}: {error}") from error


_SOMETHING: Final = re.compile(rb"\S")
_FIRST_LINE: Final = re.compile(rb"\s*(?:From |[!-9;-~]+[ \t]*:)")


def _refuse_non_mail(raw: bytes) -> list[tuple[int, int]]:
    """Reject what is plainly no RFC 5322 message, with a reason a person understands; else the
    spans of the big base64 leaf bodies (`_scan`). No copy of `raw` is made."""
    if not _SOMETHING.search(raw):
        raise ParseError("empty message")
    if raw.startswith(_OLE2_MAGIC):
        raise ParseError("an Outlook .msg file (OLE2 binary), not an RFC 5322 message")
    if not _FIRST_LINE.match(raw):  # the stdlib skips leading blank lines, with a defect
        raise ParseError("not an RFC 5322 message: the first line is no header field")
    if b"\x00" in _BLANK_LINE.split(raw[:_HEADER_SCAN], maxsplit=1)[0]:
        raise ParseError("not an RFC 5322 message: NUL bytes in the header")
    shape, cuts = _scan(raw)
    if shape.depth > MAX_MIME_DEPTH:
        raise ParseError(f"MIME parts nested more than {MAX_MIME_DEPTH} deep")
    if shape.parts > MAX_MIME_PARTS:
        raise ParseError(f"more than {MAX_MIME_PARTS} MIME parts")
    if shape.encoded_words > MAX_ENCODED_WORDS:
        raise ParseError(f"more than {MAX_ENCODED_WORDS} RFC 2047 encoded-words in the headers")
    return cuts


class Shape(NamedTuple):
    depth: int
    parts: int
    encoded_words: int  # "=?" in header blocks: an upper bound of the RFC 2047 encoded-words


def mime_shape(raw: bytes) -> Shape:
    """Nesting depth, number of parts and encoded-words of a message, from its raw bytes without a tree."""
    return _scan(raw)[0]


def _delimiter(raw: bytes, position: int, names: list[bytes]) -> tuple[int, int, bytes, bool] | None:
    """The first delimiter line at or after `position` (a line start or not) of one of `names`
    (longest first): (line start, line end, boundary, closing?). A delimiter is "--" + boundary,
    then "--" when closing, then only spaces, tabs or CR up to the line end (RFC 2046 5.1.1).
    Found with `bytes.find`: no regex to compile for each boundary, and base64 has no "-"."""
    if raw.startswith(b"--", position) and (position == 0 or raw[position - 1] == 0x0A):
        start = position
    else:
        start = _after_break(raw, position)
    while start >= 0:
        end = raw.find(b"\n", start)
        end = len(raw) if end < 0 else end
        line = raw[start + 2:end]
        for name in names:
            if line.startswith(name):
                tail = line[len(name):]
                if tail.startswith(b"--") and not tail[2:].strip(b" \t\r"):
                    return start, end, name, True
                if not tail.strip(b" \t\r"):
                    return start, end, name, False
        start = _after_break(raw, end)
    return None


def _after_break(raw: bytes, position: int) -> int:
    """Start of the first line after `position` that begins with "--", -1 if none."""
    found = raw.find(b"\n--", position)
    return found + 1 if found >= 0 else -1


def _scan(raw: bytes) -> tuple[Shape, list[tuple[int, int]]]:
    """The shape of a message, and the (start, end) of the base64 leaf bodies worth cutting out.

    A line scan: header blocks name their Content-Type; a multipart pushes its boundary, a
    message/rfc822 part pushes a level whose header block follows at once; a delimiter line
    (RFC 2046 5.1.1) of an open boundary closes the levels opened inside it and starts a part.
    It stops as soon as a limit is passed, so hostile input costs no more than the limit.
    Approximate where the stdlib is lenient with broken structure; on the public corpus it
    counts within a few parts and levels of the stdlib's tree. A body is only cut out when no
    line in it starts with "--" (so the stdlib cannot see a boundary there), and `_tree`
    checks the stdlib's tree against the cuts before trusting them.
    """
    stack: list[bytes | None] = []  # open levels: a multipart's boundary, None for message/*
    cuts: list[tuple[int, int]] = []
    depth = parts = words = 0
    position = 0
    in_headers = True
    leaf: int | None = None  # where the body of the leaf part being read starts, if worth cutting
    while position <= len(raw):
        if in_headers:
            end = _EMPTY_HEADER.match(raw, position) or _HEADER_END.search(raw, position)
            block = raw[position:end.start() if end else len(raw)]
            position = end.end() if end else len(raw) + 1
            words += block.count(b"=?")
            if words > MAX_ENCODED_WORDS:
                return Shape(depth, parts, words), cuts
            kind, boundary = _container(block)
            in_headers = False
            if kind == b"multipart" and boundary:
                stack.append(boundary)
            elif kind == b"message":
                stack.append(None)
                in_headers = True
            else:
                leaf = position if end and _is_base64(block) else None
                continue
            depth = max(depth, len(stack))
            if depth > MAX_MIME_DEPTH:
                return Shape(depth, parts, words), cuts
            continue
        boundaries = frozenset(boundary for boundary in stack if boundary is not None)
        if not boundaries:
            if leaf is not None:
                _cut(raw, leaf, len(raw), cuts)
            break
        found = _delimiter(raw, position, sorted(boundaries, key=len, reverse=True))
        if found is None:
            break
        line, line_end, name, closing = found
        if leaf is not None:
            _cut(raw, leaf, line - (2 if raw[line - 2:line] == b"\r\n" else 1), cuts)
            leaf = None
        position = line_end + 1
        level = max(index for index, boundary in enumerate(stack) if boundary == name)
        del stack[level + (0 if closing else 1):]
        if not closing:
            parts += 1
            if parts > MAX_MIME_PARTS:
                return Shape(depth, parts, words), cuts
            in_headers = True
    return Shape(depth, parts, words), cuts


def _is_base64(block: bytes) -> bool:
    found = _CTE.search(block)
    return found is not None and found.group(1).strip().lower() == b"base64"


def _cut(raw: bytes, start: int, end: int, cuts: list[tuple[int, int]]) -> None:
    """Record raw[start:end] as a body to leave out of the tree, if it is big and safe to."""
    if (end - start >= CUT_MIN_BYTES and not raw.startswith(b"--", start)
            and raw.find(b"\n--", start, end) < 0 and raw.find(b"\r--", start, end) < 0):
        cuts.append((start, end))


def _tree(raw: bytes, cuts: list[tuple[int, int]]) -> tuple[Message, dict[int, tuple[int, int]]]:
    """The stdlib's tree of the message, and the cut-out body span of each part that has one
    (by `id(part)`). The bodies in `cuts` are replaced by a random marker line first; a tree in
    which each marker is not exactly one base64 leaf's whole payload is thrown away, and the
    whole message is parsed as it is."""
    if not cuts:
        return parse_bytes(raw), {}
    nonce = os.urandom(12).hex()
    view = memoryview(raw)
    pieces: list[bytes | memoryview] = []
    position = 0
    for index, (start, end) in enumerate(cuts):
        pieces += [view[position:start], f"MAILDESK-CUT-{nonce}-{index}".encode()]
        position = end
    pieces.append(view[position:])
    message = parse_bytes(b"".join(pieces))
    found: dict[int, tuple[int, int]] = {}
    used: set[int] = set()
    prefix = f"MAILDESK-CUT-{nonce}-"
    for part in message.walk():
        payload = part._payload  # the undecoded text; get_payload() would decode it
        if isinstance(payload, str) and prefix in payload:
            index = payload[len(prefix):] if payload.startswith(prefix) else ""
            if (not index.isdigit() or int(index) >= len(cuts) or int(index) in used or part.is_multipart()
                    or str(part.get("content-transfer-encoding", "")).strip().lower() != "base64"):
                return parse_bytes(raw), {}
            used.add(int(index))
            found[id(part)] = cuts[int(index)]
    if len(found) != len(cuts):
        return parse_bytes(raw), {}
    return message, found


def _container(block: bytes) -> tuple[bytes, bytes]:
    """(b"multipart" | b"message" | b"", boundary) from a header block's first Content-Type."""
    found = _CONTENT_TYPE.search(block)
    if found is None:
        return b"", b""
    value = found.group(1)
    kind = _CONTAINER.match(value)
    if kind is None:
        return b"", b""
    major, minor = kind.group(1).lower(), kind.group(2).lower()
    if major == b"message" and minor not in (b"rfc822", b"global"):
        return b"", b""  # delivery-status and the like are header blocks, not mails
    boundary = _BOUNDARY.search(value)
    found_boundary = (boundary.group(1) if boundary.group(1) is not None else boundary.group(2)) if boundary else b""
    return major, found_boundary.rstrip(b" \t")


def _inbound(raw: bytes, message: Message, cut: dict[int, tuple[int, int]]) -> InboundMail:
    """Build the mail from the message tree (`cut`: the bodies left in `raw`, see `_tree`)."""
    if len(message) == 0:
        raise ParseError("no header fields: not an RFC 5322 message")
    defects: list[str] = []
    categories: set[str] = set()
    raw_headers = [(name, value) for name, value in message.raw_items()]
    headers = tuple((name, _header_text(name, value, defects)) for name, value in raw_headers)
    addresses = {key: _addresses(raw_headers, key, categories) for key in _ADDRESS_HEADERS}
    _check_addresses(raw_headers, categories)
    from_name, from_address = _sender(addresses["from"], raw_headers, defects)
    parts = list(message.walk())
    plain, html = _bodies(message, raw, cut, defects)
    text = plain or (html_to_text(html) if html else "")
    return InboundMail(
        message_id=_message_id(headers, defects),
        subject=_first(headers, "subject"),
        from_address=from_address,
        from_name=from_name.replace("\x00", REPLACEMENT),
        to=_bare(addresses["to"]),
        cc=_bare(addresses["cc"]),
        in_reply_to=_first_id(_first(headers, "in-reply-to")),
        references=_references(" ".join(_all(headers, "references")), defects),
        date=_date(raw_headers, headers, defects, categories),
        text=text,
        new_text=new_text(text),
        html=html,
        headers=headers,
        attachments=_attachments(parts, raw, cut, defects, categories),
        defects=tuple(defects + _mime_defects(parts, categories)),
        report=delivery_report(message) if message.get_content_type() == "multipart/report" else None,
    )


# Headers ------------------------------------------------------------------------------------


def _header_text(name: str, raw: str, defects: list[str]) -> str:
    """A header value unfolded and decoded: raw 8-bit bytes first, then RFC 2047 encoded-words."""
    value = _FOLDING.sub("", raw).strip()
    if not value.isascii():
        value, charset = _decode_8bit(value)
        if charset != "utf-8":  # RFC 6532 allows raw UTF-8; anything else is a sender's fault
            defects.append(f"8-bit {name} header bytes decoded as {charset}")
    decoded = _decode_words(value) if "=?" in value else value
    # An encoded-word can smuggle in CR, LF or NUL; a subject reused in a notification must not.
    return _CONTROL.sub(" ", decoded)


def _decode_8bit(value: str) -> tuple[str, str]:
    """Text for a value whose 8-bit bytes the stdlib kept as surrogates, and the charset used."""
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # already real text (the message came from a str)
        return value, "utf-8"
    return _decode_bytes(data, None)


def _decode_words(value: str) -> str:
    """RFC 2047 encoded-words decoded; a broken one stays as written rather than vanishing."""
    try:
        chunks = decode_header(value)
    except (HeaderParseError, ValueError):
        return value
    # decode_header turns plain chunks into bytes with 'raw-unicode-escape'; undo exactly that.
    return "".join(
        chunk if isinstance(chunk, str)
        else chunk.decode("raw-unicode-escape") if charset is None
        else _decode_bytes(chunk, charset)[0]
        for chunk, charset in chunks
    )


def _decode_bytes(data: bytes, declared: str | None) -> tuple[str, str]:
    """Decode with the declared charset if it works, else utf-8, else windows-1257."""
    codec = _codec(declared)
    if codec and not (codec in _SINGLE_BYTE and _is_utf8(data)):
        text = _try_decode(data, codec)
        if text is not None:
            return text, declared or codec
    for fallback in FALLBACK_CHARSETS:
        text = _try_decode(data, fallback)
        if text is not None:
            return text, fallback
    return data.decode("utf-8", "replace"), "utf-8 with replacement characters"


def _codec(name: str | None) -> str | None:
    """The codec's canonical name, None for a missing or unknown charset."""
    if not name:
        return None
    try:
        return codecs.lookup(name.split("*")[0].strip()).name  # RFC 2231 adds "*language"
    except (LookupError, ValueError):
        return None


def _try_decode(data: bytes, codec: str) -> str | None:
    """The decoded text, or None when the bytes are not in that charset (or it is no text codec)."""
    try:
        text = data.decode(codec)
        text.encode("utf-8")  # some codecs (utf-7, utf-16) can yield lone surrogates
    except (LookupError, UnicodeError):
        return None
    return text


def _is_utf8(data: bytes) -> bool:
    return not data.isascii() and _try_decode(data, "utf-8") is not None


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name), "")


def _all(headers: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def _message_id(headers: tuple[tuple[str, str], ...], defects: list[str]) -> str:
    """The Message-ID as written, '' when missing (the caller makes one up)."""
    values = _all(headers, "message-id")
    if not values or not values[0].strip():
        defects.append("missing Message-ID")
        return ""
    if len(values) > 1:
        defects.append("several Message-ID headers; the first counts")
    return _first_id(values[0])


def _first_id(value: str) -> str:
    """The first <id> in a header, brackets kept; without brackets the value minus whitespace."""
    match = _ANGLE_ID.search(value)
    return "".join((match.group() if match else value).split())


def _ids(value: str) -> tuple[str, ...]:
    """Message-IDs of a References header; some clients separate them with commas, not spaces."""
    found = ["".join(match.split()) for match in _ANGLE_ID.findall(value)]
    return tuple(found) if found else tuple(value.split())


def _references(value: str, defects: list[str]) -> tuple[str, ...]:
    """The References, trimmed to the thread's root and the newest ones when there are too many."""
    found = _ids(value)
    if len(found) <= MAX_REFERENCES:
        return found
    defects.append(f"{len(found)} References; the first and the last {MAX_REFERENCES - 1} kept")
    return (found[0], *found[-(MAX_REFERENCES - 1):])


# Addresses and date -------------------------------------------------------------------------


def _addresses(raw_headers: list[tuple[str, str]], key: str, categories: set[str]) -> list[tuple[str, str]]:
    """(name, lower-case address) pairs of the first such header.

    mail-parser's hardened list parser is right for ASCII headers; with raw 8-bit bytes it
    garbles names, so those are split by the stdlib and decoded here.
    """
    raw = next((value for name, value in raw_headers if name.lower() == key), "")
    if raw.isascii():
        found, broken = _ascii_addresses(raw)
        pairs = [("" if name == address else name, address) for name, address in found if address]
        if broken:
            categories.add("AddressHeaderDefect")
    else:
        pairs = [(_decode_8bit(name)[0], _decode_8bit(address)[0]) for name, address in getaddresses([raw])]
        pairs = [(_decode_words(name) if "=?" in name else name, address) for name, address in pairs]
    return [(name.strip(), address.strip().lower()) for name, address in pairs if address.strip()]


def _check_addresses(raw_headers: list[tuple[str, str]], categories: set[str]) -> None:
    """"AddressHeaderDefect" when any address header is ambiguous or broken (as mail-parser had
    it); the first ASCII From, To and Cc were checked by `_addresses` already."""
    seen: set[str] = set()
    for name, value in raw_headers:
        key = name.lower()
        first = key not in seen
        seen.add(key)
        if "AddressHeaderDefect" in categories:
            return
        if key in _CHECKED_ADDRESS_HEADERS and not (first and key in _ADDRESS_HEADERS and value.isascii()):
            if (_ascii_addresses(value) if value.isascii() else _hardened_addresses(_fetched(value)))[1]:
                categories.add("AddressHeaderDefect")
                return


def _ascii_addresses(raw: str) -> tuple[tuple[tuple[str, str], ...], bool]:
    """mail-parser's hardened list parser on an ASCII header: its pairs, and whether it found the
    header broken. ~100 µs a header, so remembered: the same From comes back with each mail of a
    customer, the same To (the support address) with most mail. Long ones are not kept."""
    return _remembered_addresses(raw) if len(raw) <= ADDRESS_CACHE_CHARACTERS else _hardened_addresses(raw)


def _hardened_addresses(raw: str | Header) -> tuple[tuple[tuple[str, str], ...], bool]:
    problems: list[dict[str, object]] = []
    return tuple(get_addresses(raw, defects=problems, decode_names=True)), bool(problems)


_remembered_addresses = functools.lru_cache(maxsize=ADDRESS_CACHE)(_hardened_addresses)


def _fetched(value: str) -> str | Header:
    """A raw header value as `Message.get()` returns it under compat32 (8-bit: a `Header`)."""
    return compat32.header_fetch_parse("x", value)  # type: ignore[no-any-return]


def _sender(pairs: list[tuple[str, str]], raw_headers: list[tuple[str, str]],
            defects: list[str]) -> tuple[str, str]:
    """(display name, address) of the author; no usable From is no mail we can answer."""
    raw_from = [value for name, value in raw_headers if name.lower() == "from"]
    if not raw_from:
        raise ParseError("no From header")
    usable = [(name, address) for name, address in pairs if "@" in address.strip("@")]
    if not usable:
        usable = _lone_address(raw_from[0], defects)
    if not usable:
        raise ParseError(f"no usable From address in {raw_from[0][:200]!r}")
    if len(raw_from) > 1 or len(usable) > 1:
        defects.append("several From addresses; the first is the sender")
    return usable[0]


def _lone_address(raw: str, defects: list[str]) -> list[tuple[str, str]]:
    """The one address-like word in a malformed From ("Big Bug bb@bug.com"); none if several."""
    found = _LOOSE_ADDRESS.findall(_decode_8bit(raw)[0] if not raw.isascii() else raw)
    if len(found) != 1:
        return []
    defects.append("malformed From header; its only address taken as the sender")
    return [("", found[0].lower())]


def _bare(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """Addresses only, each once, in the order written."""
    return tuple(dict.fromkeys(address for _, address in pairs))


def _date(raw_headers: list[tuple[str, str]], headers: tuple[tuple[str, str], ...], defects: list[str],
          categories: set[str]) -> datetime | None:
    """The first Date as a timezone-aware UTC datetime (mail-parser's RFC 5322 reading, obsolete
    forms included), or None with a defect saying why."""
    value = None
    seen: dict[str, int] = {}
    for name, raw in raw_headers:
        key = name.lower()
        if key in ("date", "resent-date"):
            occurrence = seen.get(key, 0)
            seen[key] = occurrence + 1
            result = parse_mail_date(raw)
            if key == "date" and occurrence == 0:
                value = result.value
            if date_diagnostics(result, raw, key, occurrence):
                categories.add("DateHeaderDefect")
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    defects.append("unreadable Date header" if _first(headers, "date") else "missing Date header")
    return None


# Bodies and attachments ---------------------------------------------------------------------


def _bodies(message: Message, raw: bytes, cut: dict[int, tuple[int, int]], defects: list[str]) -> tuple[str, str]:
    """(plain text, html) of the body parts, each kind concatenated in message order."""
    plain: list[str] = []
    html: list[str] = []
    for index, part in enumerate(_body_parts(message)):
        text = _part_text(part, _decoded(part, raw, cut), index, defects)
        if text:
            (html if part.get_content_subtype() == "html" else plain).append(text)
    return "\n".join(plain), "\n".join(html)


def _decoded(part: Message, raw: bytes, cut: dict[int, tuple[int, int]]) -> bytes | None:
    """`part.get_payload(decode=True)`, also for a body left in the raw bytes."""
    span = cut.get(id(part))
    if span is None:
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else None
    # what the stdlib does with a base64 payload, on the bytes it would have held
    return _decode_b(b"".join(raw[span[0]:span[1]].splitlines()))


def _body_parts(message: Message) -> list[Message]:
    """Leaf text/plain and text/html parts that are the body, not attached files or mails.

    A named part counts as an attachment even when shown inline: an attached log must not
    become the text that commands are read from.
    """
    found: list[Message] = []
    stack = [message]
    while stack:
        part = stack.pop()
        if part is not message and _is_attached(part):
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed(payload))
        elif part.get_content_type() in ("text/plain", "text/html"):
            found.append(part)
    return found


def _is_attached(part: Message) -> bool:
    return (part.get_content_disposition() == "attachment" or part.get_filename() is not None
            or part.get_content_type() == "message/rfc822")


def _part_text(part: Message, data: bytes | None, index: int, defects: list[str]) -> str:
    """A body part's text in its charset, or the fallbacks when it declares none or a wrong one."""
    if not isinstance(data, bytes) or not data:
        return ""
    declared = part.get_content_charset()
    decoded, used = _decode_bytes(data, declared)
    text = decoded.replace("\r\n", "\n")
    if "\x00" in text:  # PostgreSQL text cannot hold NUL: the whole mail would fail to store
        text = text.replace("\x00", REPLACEMENT)
        defects.append(f"NUL bytes in body part {index} replaced")
    if data.isascii() or used == declared or _codec(used) == _codec(declared):
        return text
    label = f"charset {declared}" if declared else "no charset"
    defects.append(f"body part {index} with {label} decoded as {used}")
    return text


def _attachments(parts: list[Message], raw: bytes, cut: dict[int, tuple[int, int]], defects: list[str],
                 categories: set[str]) -> tuple[Attachment, ...]:
    """The attached files, chosen as mail-parser chose them: every leaf (or multipart marked
    "attachment") with a file name, or with a Content-ID and not text/plain or text/html, or
    with disposition "attachment"; a part inside an attached container is never shown inline."""
    result = []
    for part in parts:
        if part.is_multipart() and str(part.get_content_disposition() or "").lower() != "attachment":
            continue
        metadata, problems = mime_header_view(part)
        filename = decode_header_part(metadata.get_filename(), defects=problems)
        if problems:
            categories.add("MimeHeaderDefect")
        content_id = str(metadata.get("content-id") or "")
        if not filename and content_id and metadata.get_content_subtype() not in ("html", "plain"):
            filename = content_id
        disposition = str(metadata.get_content_disposition() or "").lower()
        if not (filename or metadata.get_content_subtype() == "rtf" or disposition == "attachment"):
            continue
        result.append(Attachment(filename=filename.replace("\x00", REPLACEMENT),
                                 content_type=str(metadata.get_content_type()).replace("\x00", REPLACEMENT),
                                 content=_attachment_content(part, raw, cut, defects)))
    return tuple(result)


def _attachment_content(part: Message, raw: bytes, cut: dict[int, tuple[int, int]],
                        defects: list[str]) -> bytes | Base64Body:
    """The file's bytes; a body left in the raw bytes stays there, decoded when stored."""
    span = cut.get(id(part))
    if span is not None:
        return Base64Body(raw, *span)
    if part.is_multipart():  # an attached container: its parts as text, as mail-parser gave it
        return "".join(_as_string(sub) for sub in part.get_payload()).encode("utf-8", "surrogateescape")
    if str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
        payload = part._payload  # the base64 text exactly as sent
        data = lenient_base64(payload.encode("ascii", "surrogateescape") if isinstance(payload, str) else payload)
        if data is None:
            defects.append("attachment with undecodable base64")
            return b""
        return data
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _as_string(part: Message) -> str:
    try:
        return part.as_string()
    except Exception:  # a broken part is still an attachment, empty
        return ""


def _decode_b(data: bytes) -> bytes:
    """The stdlib's own lenient base64 decoding, as `get_payload(decode=True)` uses it."""
    return decode_b(data)[0]  # type: ignore[no-any-return]


def _mime_defects(parts: list[Message], categories: set[str]) -> list[str]:
    """The stdlib's MIME defect categories, and the header checks above, short."""
    for part in parts:
        categories.update(type(defect).__name__ for defect in part.defects)
    return [f"MIME: {category}" for category in sorted(categories)]


# Text from HTML -----------------------------------------------------------------------------

_SKIPPED_TAGS: Final = frozenset({"script", "style", "head", "title", "template"})
_VOID_TAGS: Final = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link",
                               "meta", "param", "source", "track", "wbr"})
_BLOCK_TAGS: Final = frozenset({"div", "tr", "li", "dt", "dd", "pre", "address", "section",
                                "article", "header", "footer", "center", "form", "caption"})
_PARAGRAPH_TAGS: Final = frozenset({"p", "blockquote", "table", "ul", "ol", "dl", "h1", "h2", "h3",
                                    "h4", "h5", "h6", "hr"})
_HIDING_STYLE: Final = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?![.\d])|opacity\s*:\s*0(?![.\d])",
    re.IGNORECASE,
)


def html_to_text(html: str) -> str:
    """Readable text of an HTML body: visible text only, line breaks where a browser breaks.

    Quoted mail inside <blockquote> gets '> ' prefixes, so `quotes.new_text` drops it as it
    drops quoted plain text.
    """
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return extractor.text()


class _TextExtractor(HTMLParser):
    """Collects visible text; a stack of open elements tracks hidden and quoted regions."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._open: list[tuple[str, bool, bool]] = []  # (tag, hides, quotes)
        self._hidden = 0
        self._quoted = 0
        self._line_start = True
        self._trailing_newlines = 2  # nothing written yet: no break needed before the first line

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._break(tag)
        if tag == "li":
            self._write("- ")
        if tag in _VOID_TAGS:
            return
        values = dict(attrs)
        hides = tag in _SKIPPED_TAGS or "hidden" in values or bool(_HIDING_STYLE.search(values.get("style") or ""))
        quotes = tag == "blockquote"
        self._open.append((tag, hides, quotes))
        self._hidden += hides
        self._quoted += quotes

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID_TAGS:  # <br/> arrives as start and end; the start already broke the line
            return
        if not any(name == tag for name, _, _ in self._open):
            self._break(tag)
            return
        while self._open:
            name, hides, quotes = self._open.pop()
            self._hidden -= hides
            self._quoted -= quotes
            if name == tag:
                break
        self._break(tag)

    def handle_data(self, data: str) -> None:
        if self._hidden:
            return
        words = " ".join(data.split())
        if not words:
            if data and not self._line_start:
                self._out.append(" ")
            return
        if data[:1].isspace() and not self._line_start:
            self._out.append(" ")
        self._write(words)
        if data[-1:].isspace():
            self._out.append(" ")

    def _write(self, words: str) -> None:
        if self._line_start:
            self._out.append("> " * self._quoted)
            self._line_start = False
        self._out.append(words)
        self._trailing_newlines = 0

    def _break(self, tag: str) -> None:
        """End the line for <br> and block elements; a blank line around paragraphs."""
        if self._hidden:
            return
        if tag == "br":
            self._newline()
        elif tag in _BLOCK_TAGS or tag in _PARAGRAPH_TAGS:
            wanted = 2 if tag in _PARAGRAPH_TAGS else 1
            while self._trailing_newlines < wanted:
                self._newline()

    def _newline(self) -> None:
        self._out.append("\n")
        self._line_start = True
        self._trailing_newlines += 1

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self._out).split("\n")]
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
