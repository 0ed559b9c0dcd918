"""Notification templates -> subject, plain text and HTML, in the recipient's language.

Where it sits in the flow: `notify` decides who is told what and builds the context; it
calls `Renderer.render` for each recipient, and the `Rendered` result goes into an outbox row
that `outbox` later sends. This is the only module that imports Jinja.

Templates live in `templates/{language}/{name}.subject.j2`, `.txt.j2` and `.html.j2`. They are
trusted files from the repository; everything a customer wrote (summaries, comments, names)
reaches them only as variables, so it is printed, never evaluated. Plain text and the subject
use an environment without autoescaping, HTML one with it; both are strict, so a template that
names a variable nobody supplied fails loudly instead of sending a mail with a hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined, Template
from jinja2.bccache import Bucket
from jinja2.runtime import Context, Macro, new_context

LANGUAGES: tuple[str, ...] = ("lv", "en")
TEMPLATES: tuple[str, ...] = (
    "ticket_created",
    "ticket_announced",
    "status_changed",
    "estimate_request",
    "solution_proposed",
    "comment",
    "command_refused",
    "user_welcome",
    "unknown_sender",
    "acceptance_reminder",
    "auto_closed",
    "deadline_warning",
    "confirm_request",
)
PARTS: tuple[str, ...] = ("subject", "txt", "html")
MAX_SUBJECT = 200
MEMOIZED_CALLS = 1024  # outputs kept per macro: command lists, keywords and labels are few

# Customers may write these Latvian forms instead of the English keywords (workflow.md);
# notifications show both so that either can be copied into a reply.
LATVIAN_KEYWORDS: dict[str, str] = {
    "ACCEPT THE ESTIMATE": "APSTIPRINĀT NOVĒRTĒJUMU",
    "CANCEL REQUEST": "ATCELT PIEPRASĪJUMU",
    "ACCEPT THE SOLUTION": "APSTIPRINĀT RISINĀJUMU",
    "REOPEN": "ATVĒRT NO JAUNA",
}

# Line breaks of every kind (and other control characters) would let customer text start a
# new header line in the subject (RFC 5322 section 2.2: header fields end at CRLF).
_UNSAFE_IN_HEADER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# RFC 6068 section 2: characters an addr-spec may carry unencoded in a mailto URI.
_MAILTO_ADDRESS_SAFE = "@!$'()*+,;:"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def default_templates_dir() -> Path:
    """The repository's `templates/`, so that an installed checkout finds its own templates."""
    return Path(__file__).resolve().parent.parent / "templates"


def one_line(value: Any, limit: int = MAX_SUBJECT) -> str:
    """Text made fit for a header: one line, no control characters, collapsed spaces, capped."""
    flat = " ".join(_UNSAFE_IN_HEADER.sub(" ", str(value)).split())
    if len(flat) <= limit:
        return flat
    return flat[: limit - 1].rstrip() + "…"


def mailto(address: str, subject: str, body: str) -> str:
    """A `mailto:` URL that opens a prefilled reply (RFC 6068 percent-encoding, UTF-8).

    Header values are encoded with no safe characters at all, so `&`, `=`, `#` and line breaks
    in a summary cannot add or cut fields; the subject is made one line like a real header.
    """
    return (
        "mailto:" + quote(address, safe=_MAILTO_ADDRESS_SAFE)
        + "?subject=" + quote(one_line(subject), safe="")
        + "&body=" + quote(body, safe="")
    )


def quoted_lines(text: str) -> str:
    """Each line indented by four spaces, as a plain-text mail quotes what someone wrote; lines
    of only white space stay empty, and no line ends in white space (quoted-printable would
    carry each such space as "=20")."""
    return "\n".join("    " + line if line else "" for line in map(str.rstrip, str(text).splitlines()))


def latvian_keyword(keyword: str) -> str:
    """The Latvian form of a customer command, or the keyword itself when it has none."""
    return LATVIAN_KEYWORDS.get(keyword, keyword)


class _Template(Template):
    """Jinja's template, minus per-call costs that buy us nothing.

    Each `{% import %}` asks whether the importing context carries globals of its own, by a set
    difference over a ChainMap (17 % of rendering a notification); ours never do: every global
    is the environment's, so the imported module can always be the cached one. And a macro of
    an imported module sees only its arguments and the environment's globals (imports do not
    pass the context), so its output is a function of its arguments: the module's macros are
    memoized (`_memoized`), and the command list, keywords and status labels every mail shows
    are rendered once per language and format instead of once per mail. For the same reason
    each new context copies the globals from a plain dict, not from Jinja's ChainMap of the
    template's (none) and the environment's: 23 instead of 5 µs, three contexts a notification.
    """

    _flat_globals: dict[str, Any] | None = None

    def new_context(self, vars: dict[str, Any] | None = None, shared: bool = False,
                    locals: Mapping[str, Any] | None = None) -> Context:
        if self._flat_globals is None:  # the environment's globals are all set before a template loads
            self._flat_globals = dict(self.globals)
        return new_context(self.environment, self.name, self.blocks, vars, shared, self._flat_globals, locals)

    def _get_default_module(self, ctx: Any = None) -> Any:
        fresh = self._module is None
        module = super()._get_default_module(None)
        if fresh:
            for name, value in vars(module).items():
                if isinstance(value, Macro):
                    setattr(module, name, _memoized(value))
        return module


class _Context(Context):
    """Jinja's context, with one short cut: the template calls a memoized macro (`_memoized`)
    directly. Jinja's `call` first asks every callable, by four `hasattr`s, whether it wants the
    context passed in; ours never does, and a notification makes a few dozen such calls."""

    def call(__self, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's own signature)
        if type(__obj) is FunctionType and __obj.__code__ is _MEMOIZED_CODE:
            kwargs.pop("_block_vars", None)  # what Jinja passes for a context-taking callable; ours take none
            kwargs.pop("_loop_vars", None)
            return __obj(*args, **kwargs)
        return super().call(__obj, *args, **kwargs)


def _memoized(macro: Macro) -> Callable[..., Any]:
    """`macro`, remembering its output for arguments that are plain strings or lists of them
    (command lists, keywords, labels). Anything else is rendered each time: a Markup argument
    equals its str as a key but not as HTML, and a ticket's rows would never come again."""
    outputs: dict[tuple[Any, ...], Any] = {}

    def call(*args: Any, **kwargs: Any) -> Any:
        key = None if kwargs else _memo_key(args)
        if key is None:
            return macro(*args, **kwargs)
        output = outputs.get(key)  # one lookup: the poller and the timers may render at once
        if output is None:
            if len(outputs) >= MEMOIZED_CALLS:
                outputs.clear()
            output = outputs[key] = macro(*args)
        return output
    return call


_MEMOIZED_CODE = _memoized(Macro.__new__(Macro)).__code__  # the code every memoized macro's function shares


def _memo_key(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    key: list[Any] = []
    for arg in args:
        kind = type(arg)
        if kind is str:
            key.append(arg)
        elif (kind is list or kind is tuple) and all(type(item) is str for item in arg):
            key.append((kind, tuple(arg)))
        else:
            return None
    return tuple(key)


class _Environment(Environment):
    """Jinja's environment with loaded templates in a dict and a dict-first attribute lookup:
    every `ticket.key` of our templates reads a dict, and Jinja tries `getattr` first, which
    raises and catches an AttributeError each time (a tenth of rendering). A key of a dict now
    wins over a method of the same name (`items`); our contexts are data, so that is the
    reading a template means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loaded: dict[str, Template] = {}

    def get_template(self, name: Any, parent: str | None = None, globals: Any = None) -> Template:
        """Every template stays loaded (no reloading, no cache limit), so a name already loaded
        is answered from a plain dict: Jinja builds a weak reference and a key per lookup, and
        a notification's extends and imports look up ~14 templates (a tenth of rendering)."""
        if type(name) is str and globals is None:  # our join_path is Jinja's: the parent never changes a name
            template = self._loaded.get(name)
            if template is None:
                template = self._loaded[name] = super().get_template(name, parent)
            return template
        return super().get_template(name, parent, globals)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def compiled_dir(templates_dir: Path) -> Path:
    """Where `make setup` leaves every template compiled (`python -m maildesk.render`)."""
    return templates_dir / ".compiled"


class _LayeredCache(FileSystemBytecodeCache):
    """Compiled templates read from the release's own folder first (`make setup` fills it; it is
    read-only under systemd), then from the data folder's, where what is compiled at run time
    goes (None: nowhere). A template changed since it was compiled fails Jinja's checksum and is
    compiled again."""

    def __init__(self, writable: Path | None, shipped: Path) -> None:
        if writable is not None:
            writable.mkdir(parents=True, exist_ok=True)
        super().__init__(str(writable or shipped))
        self._writable = writable is not None
        self._shipped = FileSystemBytecodeCache(str(shipped))

    def load_bytecode(self, bucket: Bucket) -> None:
        self._shipped.load_bytecode(bucket)
        if bucket.code is None and self._writable:
            super().load_bytecode(bucket)

    def dump_bytecode(self, bucket: Bucket) -> None:
        if self._writable:
            super().dump_bytecode(bucket)


def _environment(templates_dir: Path, *, autoescape: bool, cache_dir: Path | None, part: str) -> Environment:
    environment = _Environment(
        loader=FileSystemLoader(str(templates_dir)),
        cache_size=-1,  # every template stays: a plain dict, not an LRU taking a lock per lookup
        bytecode_cache=_LayeredCache(cache_dir and cache_dir / part, compiled_dir(templates_dir) / part),
        autoescape=autoescape,
        undefined=StrictUndefined,
        auto_reload=False,  # templates are files of the release: no stat() per rendered mail
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.template_class = _Template
    environment.context_class = _Context
    environment.globals["mailto"] = mailto
    environment.filters["one_line"] = one_line
    environment.filters["lv_keyword"] = latvian_keyword
    environment.filters["quoted_lines"] = quoted_lines
    return environment


class Renderer:
    """Renders one notification for one recipient; holds the two Jinja environments."""

    def __init__(self, templates_dir: Path, cache_dir: Path | None = None) -> None:
        """Compiled templates come from `compiled_dir` (what `make setup` compiled) or
        `cache_dir`, which keeps those compiled at run time between processes (each `maildesk
        ingest` from an MTA is a new process, and compiling costs more than rendering); text and
        HTML compile the same sources differently, so each has its own folder."""
        self.templates_dir = templates_dir
        self._text = _environment(templates_dir, autoescape=False, cache_dir=cache_dir, part="text")
        self._html = _environment(templates_dir, autoescape=True, cache_dir=cache_dir, part="html")

    def load_all(self) -> int:
        """Compile (or read from the caches) every template, and build the macro modules they
        import, before a mail waits for them: the daemon does it before READY (0.4-0.6 s when
        nothing is compiled yet, 40 ms otherwise). Returns how many templates were loaded."""
        loaded = 0
        for name in self._text.list_templates(extensions=["j2"]):
            for environment in self._environments_for(name):
                template = environment.get_template(name)
                if name.rsplit("/", 1)[-1].startswith(("_parts", "_macros", "_words")):
                    template._get_default_module()  # macro libraries: importing them needs no variables
                loaded += 1
        return loaded

    def _environments_for(self, name: str) -> tuple[Environment, ...]:
        if name.endswith(".html.j2"):
            return (self._html,)
        if name.endswith("_words.j2"):  # words shared by the text and the HTML templates
            return (self._text, self._html)
        return (self._text,)

    def render(self, name: str, language: str, context: Mapping[str, Any]) -> Rendered:
        """Subject, text and HTML of `name` in `language`; raises on anything unknown or missing."""
        if language not in LANGUAGES:
            raise ValueError(f"unknown language {language!r}; expected one of {', '.join(LANGUAGES)}")
        if name not in TEMPLATES:
            raise ValueError(f"unknown notification template {name!r}")
        values = dict(context)
        subject = self._text.get_template(f"{language}/{name}.subject.j2").render(values)
        text = self._text.get_template(f"{language}/{name}.txt.j2").render(values)
        html = self._html.get_template(f"{language}/{name}.html.j2").render(values)
        return Rendered(subject=one_line(subject), text=text, html=html)


def compile_release(templates_dir: Path) -> int:
    """Compile every template into `compiled_dir` (what `make setup` runs); how many there are."""
    return Renderer(templates_dir, compiled_dir(templates_dir)).load_all()


if __name__ == "__main__":  # `python -m maildesk.render`: run by `make setup`
    templates = default_templates_dir()
    print(f"compiled {compile_release(templates)} templates into {compiled_dir(templates)}")
