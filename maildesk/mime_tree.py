"""Raw bytes -> the stdlib's message tree (compat32), without a regex compile per boundary.

Where it sits in the flow: `parse` calls `parse_bytes` once per mail and builds the
`InboundMail` from the tree it returns.

Why: up to Python 3.12, `email.feedparser` compiles a regular expression for each multipart
boundary it meets. Boundaries are unique per mail, so `re`'s cache never helps: it was a tenth
of parsing a benchmark-corpus mail. Python 3.13 replaced that pattern by a `startswith` test and
one precompiled pattern for the rest of the line (CPython gh-106628). On older versions this
module runs a private copy of `email.feedparser` whose `re.compile` builds that 3.13 matcher
for the boundary pattern and hands every other pattern to `re`. The stdlib's own module is not
changed, and on 3.13 and later it is used as it is.
"""

from __future__ import annotations

import importlib.util
import re
from email import feedparser as stdlib_feedparser
from email.message import Message
from email.policy import compat32
from typing import Any, Final

# The pattern email.feedparser up to 3.12 builds per boundary, around `re.escape("--" + boundary)`.
BOUNDARY_PREFIX: Final = "(?P<sep>"
BOUNDARY_SUFFIX: Final = r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
# What follows the separator on a boundary line (3.13's `boundaryendRE`).
_BOUNDARY_END: Final = re.compile(r"(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")
_ESCAPED: Final = re.compile(r"\\(.)", re.DOTALL)
_CHUNK: Final = 8192  # what email.parser.Parser feeds at a time


class BoundaryMatcher:
    """Stands in for the compiled boundary pattern: `match` is all the feed parser calls, and it
    reads only the `end` and `linesep` groups and the truth of the result."""

    __slots__ = ("separator",)

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return _BOUNDARY_END.match(line, len(self.separator))


def unescape(escaped: str) -> str:
    """The text `re.escape` was given: it puts one backslash before each special character."""
    return _ESCAPED.sub(r"\1", escaped)


class _PatternCompiler:
    """The `re` the private feed parser sees: `escape` and `compile`, the only names its code
    uses after import."""

    escape = staticmethod(re.escape)

    @staticmethod
    def compile(pattern: str, flags: int = 0) -> Any:
        if flags == 0 and pattern.startswith(BOUNDARY_PREFIX) and pattern.endswith(BOUNDARY_SUFFIX):
            return BoundaryMatcher(unescape(pattern[len(BOUNDARY_PREFIX):-len(BOUNDARY_SUFFIX)]))
        return re.compile(pattern, flags)


def _feed_parser_class() -> Any:
    if hasattr(stdlib_feedparser, "boundaryendRE"):  # 3.13 and later: already without the compile
        return stdlib_feedparser.FeedParser
    spec = importlib.util.find_spec("email.feedparser")
    if spec is None or spec.loader is None:
        raise ImportError("the stdlib's email.feedparser source was not found")
    private = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(private)  # its patterns compile with the real `re`, at import
    private.re = _PatternCompiler  # type: ignore[attr-defined]
    return private.FeedParser


FeedParser: Final = _feed_parser_class()


def parse_bytes(raw: bytes) -> Message:
    """`email.parser.BytesParser(policy=compat32).parsebytes(raw)`, fed the same way."""
    text = raw.decode("ascii", errors="surrogateescape")
    parser = FeedParser(policy=compat32)
    for start in range(0, len(text), _CHUNK):
        parser.feed(text[start:start + _CHUNK])
    return parser.close()  # type: ignore[no-any-return]
