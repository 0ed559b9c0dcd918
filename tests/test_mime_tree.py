"""maildesk.mime_tree: the stdlib's tree, the same as BytesParser gives, without a regex per boundary."""

from __future__ import annotations

import email.feedparser
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maildesk import mime_tree
from maildesk.mime_tree import BOUNDARY_PREFIX, BOUNDARY_SUFFIX, BoundaryMatcher, parse_bytes, unescape
from tests.test_parse import shared_corpus

BOUNDARIES = ("simple", "=_NextPart_000_0012_01DB3F.2A8C9E10", "a.b+c*d?e(f)g[h]i{j}k|l^m$n\\o",
              "--already-dashed", "with space", "'quoted'", "Apple-Mail=_5D8E-4F2A")


def _stdlib_tree(raw: bytes) -> Message:
    return BytesParser(policy=compat32).parsebytes(raw)


def _shape(message: Message) -> list[tuple[Any, ...]]:
    """Everything the parser decides about each part: type, headers, texts and defects."""
    return [(part.get_content_type(), part.items(), part.preamble, part.epilogue,
             part._payload if isinstance(part._payload, str) else len(part._payload),
             [type(defect).__name__ for defect in part.defects]) for part in message.walk()]


def _lines(separator: str) -> list[str]:
    return [separator, separator + "\n", separator + "\r\n", separator + "\r", separator + "--",
            separator + "--\r\n", separator + "  \t\n", separator + "-- \n", separator + "x\n",
            separator + "--x", " " + separator + "\n", separator[:-1] + "\n", separator + separator + "\n",
            separator.upper() + "\n", "", "\n", "body text\n"]


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_the_matcher_answers_as_the_stdlib_pattern_on_every_kind_of_line(boundary: str) -> None:
    separator = "--" + boundary
    stdlib = re.compile(BOUNDARY_PREFIX + re.escape(separator) + BOUNDARY_SUFFIX)
    matcher = BoundaryMatcher(separator)
    for line in _lines(separator):
        expected, found = stdlib.match(line), matcher.match(line)
        assert (found is None) == (expected is None), line
        if expected is not None and found is not None:
            assert (found.group("end"), found.group("linesep")) == (expected.group("end"), expected.group("linesep"))


@given(st.text())
def test_unescape_gives_back_what_re_escape_was_given(text: str) -> None:
    assert unescape(re.escape(text)) == text


def _multipart(boundary: str, *, close: bool = True, newline: str = "\r\n", nested: str | None = None) -> bytes:
    inner = ""
    if nested is not None:
        inner = (f"--{boundary}{newline}Content-Type: multipart/alternative; boundary=\"{nested}\"{newline}{newline}"
                 f"--{nested}{newline}Content-Type: text/plain{newline}{newline}Teksts{newline}"
                 f"--{nested}{newline}Content-Type: text/html{newline}{newline}<p>Teksts</p>{newline}"
                 f"--{nested}--{newline}")
    text = (f"From: Anna <anna@klients.lv>{newline}Subject: x{newline}MIME-Version: 1.0{newline}"
            f"Content-Type: multipart/mixed; boundary=\"{boundary}\"{newline}{newline}"
            f"preamble{newline}--{boundary}{newline}Content-Type: text/plain; charset=utf-8{newline}{newline}"
            f"Labdien,{newline}--{boundary}x is not a boundary{newline}printeris nedrukā.{newline}"
            f"{inner}--{boundary}  {newline}Content-Type: application/octet-stream{newline}{newline}AAAA{newline}")
    if close:
        text += f"--{boundary}--{newline}epilogue{newline}"
    return text.encode("utf-8")


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shape", ["closed", "unclosed", "lf", "nested"])
def test_the_tree_is_the_one_bytes_parser_builds(boundary: str, shape: str) -> None:
    raw = _multipart(boundary, close=shape != "unclosed", newline="\n" if shape == "lf" else "\r\n",
                     nested="inner.+?" if shape == "nested" else None)
    tree = parse_bytes(raw)
    assert _shape(tree) == _shape(_stdlib_tree(raw))
    assert len(list(tree.walk())) == (6 if shape == "nested" else 3)


def test_no_pattern_is_compiled_for_a_mail_s_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real_compile = re.compile

    def counting(pattern: Any, flags: int = 0) -> Any:
        compiled.append(str(pattern))
        return real_compile(pattern, flags)

    monkeypatch.setattr(re, "compile", counting)
    raw = _multipart("unique-3f9c1a", nested="inner-77b2e0")
    assert len(list(parse_bytes(raw).walk())) == 6
    assert not [pattern for pattern in compiled if "unique" in pattern or "inner" in pattern]


def test_the_stdlib_module_is_left_as_it_is_and_its_own_parser_is_used_from_python_3_13() -> None:
    assert email.feedparser.re is re
    if hasattr(email.feedparser, "boundaryendRE"):  # 3.13 and later
        assert mime_tree.FeedParser is email.feedparser.FeedParser
    else:
        assert mime_tree.FeedParser is not email.feedparser.FeedParser


def test_every_public_corpus_file_gives_the_same_tree() -> None:
    corpus = shared_corpus() / "public"
    if not corpus.is_dir():
        pytest.skip(f"shared corpus not found at {corpus} (set MAILDESK_SHARED_DIR to its parent)")
    files = sorted(path for path in corpus.rglob("*") if path.is_file())
    multipart = 0
    for path in files:
        raw = path.read_bytes()
        tree = parse_bytes(raw)
        assert _shape(tree) == _shape(_stdlib_tree(raw)), path
        multipart += tree.is_multipart()
    assert multipart >= 20
