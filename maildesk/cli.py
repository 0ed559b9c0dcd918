"""The `maildesk` command line: each command a few lines over the modules that do the work."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Optional

import click
import typer
from sqlalchemy import select
from sqlalchemy.engine import Engine

from maildesk import operations, store
from maildesk.config import ConfigError, Settings, load_settings
from maildesk.cli_sla import org_set, report_app, sla_app, tick
from maildesk.directory import DirectoryError, add_organisation, add_user, list_users
from maildesk.models import OutboxItem, Ticket, utcnow
from maildesk.outbox import send_due
from maildesk.smtp import transport_for
from maildesk.process import Pipeline, groups
from maildesk.retention import kept_raw_bytes, prunable, prune_raw
from maildesk.tickets import open_for_caller
from maildesk.views import outbox_row, ticket_detail, ticket_summary, user_row

EX_TEMPFAIL = 75
EX_CONFIG = 78

app = typer.Typer(help="maildesk: an e-mail-driven service desk.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
org_app = typer.Typer(help="Customer organisations.", no_args_is_help=True)
user_app = typer.Typer(help="Customers and agents.", no_args_is_help=True)
ticket_app = typer.Typer(help="Tickets.", no_args_is_help=True)
outbox_app = typer.Typer(help="Mail waiting to be sent.", no_args_is_help=True)
inbox_app = typer.Typer(help="Incoming mail as it was kept.", no_args_is_help=True)
for name, sub in (("db", db_app), ("org", org_app), ("user", user_app), ("ticket", ticket_app),
                  ("outbox", outbox_app), ("inbox", inbox_app)):
    app.add_typer(sub, name=name)
app.add_typer(sla_app, name="sla")
app.add_typer(report_app, name="report")
org_app.command("set")(org_set)
app.command("tick")(tick)


@dataclass
class Context:
    """Settings and the engine, made once per command invocation."""

    env_file: Path | None
    _settings: Settings | None = None
    _engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.env_file)
        return self._settings

    def engine(self, *, ready: bool = True) -> Engine:
        if self._engine is None:
            self._engine = store.open_engine(self.settings.database_url)
        if ready:
            store.check_ready(self._engine)
        return self._engine


def _context(ctx: typer.Context) -> Context:
    return ctx.obj  # type: ignore[no-any-return]


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"maildesk: {message}", err=True)
    raise typer.Exit(code)


def print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


@app.callback()
def main_options(ctx: typer.Context, env_file: Annotated[Optional[Path], typer.Option(
        "--env-file", help="Read settings from this file (default: ./.env when present).")] = None) -> None:
    ctx.obj = Context(env_file)
    try:
        ctx.obj.settings
    except ConfigError as error:
        typer.echo(f"maildesk: configuration error: {error}", err=True)
        raise typer.Exit(EX_CONFIG) from None


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Create or migrate the database schema to this version."""
    context = _context(ctx)
    store.upgrade(context.engine(ready=False))
    typer.echo(f"database ready: {store.safe_url(context.settings.database_url)}")


@org_app.command("add")
def org_add(ctx: typer.Context, name: str,
            domain: Annotated[Optional[list[str]], typer.Option("--domain", help="A mail domain; repeatable.")] = None,
            language: Annotated[Optional[str], typer.Option(help="lv or en")] = None,
            service_level: Annotated[Optional[str], typer.Option("--service-level")] = None) -> None:
    """Add a customer organisation."""
    _check_language(language)
    with store.transaction(_context(ctx).engine()) as session:
        try:
            add_organisation(name, session=session, domains=domain or [], language=language,
                             service_level=service_level)
        except DirectoryError as error:
            fail(str(error))
    typer.echo(f"organisation added: {name}")


@user_app.command("add")
def user_add(ctx: typer.Context, address: str, name: Annotated[str, typer.Option("--name", help="Full name.")],
             org: Annotated[Optional[str], typer.Option("--org", help="The customer's organisation.")] = None,
             responsible: Annotated[bool, typer.Option("--responsible", help="May accept estimates.")] = False,
             agent: Annotated[bool, typer.Option("--agent", help="A support agent.")] = False,
             language: Annotated[Optional[str], typer.Option(help="lv or en")] = None) -> None:
    """Add a customer (--org) or an agent (--agent)."""
    _check_language(language)
    with store.transaction(_context(ctx).engine()) as session:
        try:
            user = add_user(address, session=session, name=name, now=utcnow(), organisation=org, agent=agent,
                            responsible=responsible, language=language)
        except DirectoryError as error:
            fail(str(error))
    typer.echo(f"user added: {user.address} ({user.role}{', responsible' if user.responsible else ''})")


@user_app.command("list")
def user_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List users."""
    with store.transaction(_context(ctx).engine()) as session:
        rows = [user_row(user, organisation) for user, organisation in list_users(session=session)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        flag = " responsible" if row["responsible"] else ""
        typer.echo(f"{row['address']:<40} {row['role']:<9} {row['organisation'] or '-'}{flag}  {row['name']}")


@app.command("ingest")
def ingest(ctx: typer.Context, files: Annotated[Optional[list[Path]], typer.Argument(
        help="Files with one raw message each; none: one message on standard input.")] = None) -> None:
    """Store and process raw mail (for an MTA to pipe into). Exit 75 when a message could not be stored."""
    context = _context(ctx)
    try:
        pipeline = Pipeline(context.settings, context.engine())
    except ConfigError:
        raise
    except Exception as error:  # the MTA keeps the mail and retries: nothing was stored
        fail(f"nothing stored: {type(error).__name__}: {error}", EX_TEMPFAIL)
    failed = 0
    sources = files or [None]
    for path in sources:
        try:
            raw = path.read_bytes() if path is not None else sys.stdin.buffer.read()
            outcome = pipeline.ingest(raw, "pipe")
        except Exception as error:  # the MTA must retry: nothing was stored
            failed += 1
            typer.echo(f"maildesk: {path or 'stdin'}: not stored: {type(error).__name__}: {error}", err=True)
            continue
        label = path or "stdin"
        if outcome is None:
            typer.echo(f"{label}: already stored")
        else:
            typer.echo(f"{label}: {outcome.state} {outcome.ticket or ''} {outcome.reason}".rstrip())
    if failed:
        raise typer.Exit(EX_TEMPFAIL)


@ticket_app.command("list")
def ticket_list(ctx: typer.Context, status: Annotated[Optional[str], typer.Option(help="Only this status.")] = None,
                as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List tickets."""
    with store.transaction(_context(ctx).engine()) as session:
        query = select(Ticket).order_by(Ticket.id)
        if status:
            query = query.where(Ticket.status == status.upper())
        rows = [ticket_summary(ticket) for ticket in session.execute(query).scalars()]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['key']:<10} {row['status']:<21} {row['reporter']:<30} {row['summary']}")


@ticket_app.command("show")
def ticket_show(ctx: typer.Context, key: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a ticket with its history."""
    with store.transaction(_context(ctx).engine()) as session:
        ticket = store.find_ticket(key, session=session)
        if ticket is None:
            fail(f"no ticket {key}")
        detail = ticket_detail(ticket, session=session)
    if as_json:
        print_json(detail)
        return
    typer.echo(f"{detail['key']}  {detail['status']}  [{detail['type']}]  {detail['summary']}")
    typer.echo(f"reporter {detail['reporter']}  organisation {detail['organisation'] or '-'}  "
               f"assignee {detail['assignee'] or detail['holder']}  estimate {detail['estimate_minutes'] or '-'} min"
               f"  due {detail['due_date'] or '-'}  channel {detail['channel']}")
    for event in detail["events"]:
        change = f"{event['from_status'] or '-'} -> {event['to_status']}"
        typer.echo(f"  {event['at'][:19]}  {event['actor'] or 'system':<28} {event['outcome']:<8} "
                   f"{event['command']:<30} {change} {event['reason']}".rstrip())


@ticket_app.command("create")
def ticket_create(ctx: typer.Context, reporter: Annotated[str, typer.Option(help="The caller's address.")],
                  summary: Annotated[str, typer.Option()], by: Annotated[str, typer.Option(help="The agent.")],
                  description: Annotated[str, typer.Option()] = "",
                  ticket_type: Annotated[Optional[str], typer.Option("--type")] = None) -> None:
    """Open a ticket for a caller (the phone channel); the caller gets the acknowledgement."""
    context = _context(ctx)
    pipeline = Pipeline(context.settings, context.engine())
    with store.transaction(context.engine()) as session:
        caller = store.find_user(reporter, session=session)
        agent = store.find_user(by, session=session)
        if caller is None:
            fail(f"no user {reporter}: add them with `maildesk user add`")
        if agent is None or agent.role not in ("agent", "admin"):
            fail(f"{by} is not an agent")
        ticket = open_for_caller(caller, agent, summary, description, ticket_type, session=session,
                                 settings=context.settings, notifier=pipeline.notifier, now=utcnow())
    typer.echo(f"ticket created: {ticket.key}")


@outbox_app.command("list")
def outbox_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List outgoing mail and its state."""
    with store.transaction(_context(ctx).engine()) as session:
        query = select(OutboxItem, Ticket.key).outerjoin(Ticket, OutboxItem.ticket_id == Ticket.id).order_by(
            OutboxItem.id)
        rows = [outbox_row(item, key) for item, key in session.execute(query)]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['id']:>6} {row['status']:<8} {row['ticket'] or '-':<9} {', '.join(row['to']):<30} "
                   f"{row['subject']}")


@outbox_app.command("send")
def outbox_send(ctx: typer.Context) -> None:
    """Send every due outbox message over SMTP (to MAILDESK_DATA_DIR/sent/ when no SMTP host is set)."""
    context = _context(ctx)
    engine = context.engine()
    transport = transport_for(context.settings)
    total_sent = total_retried = total_failed = 0
    while True:
        report = send_due(engine, context.settings, transport, now=utcnow())
        total_sent, total_retried, total_failed = (total_sent + report.sent, total_retried + report.retried,
                                                   total_failed + report.failed)
        if report.sent + report.retried + report.failed == 0:
            break
    transport.close()
    typer.echo(f"sent {total_sent}, rescheduled {total_retried}, failed {total_failed}")


@outbox_app.command("retry")
def outbox_retry(ctx: typer.Context, outbox_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Try a failed outgoing mail again now."""
    if not operations.requeue_outbox(_context(ctx).engine(), outbox_id):
        fail(f"outbox {outbox_id} is not failed or pending")
    typer.echo(f"outbox {outbox_id} queued; it is sent by the daemon or `maildesk outbox send`")


@inbox_app.command("list")
def inbox_list(ctx: typer.Context, state: Annotated[Optional[str], typer.Option(
        help="failed, quarantined, held, processed, ignored or new")] = None,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List incoming mail with its processing state and reason."""
    rows = operations.inbox_rows(_context(ctx).engine(), state)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['id']:>6} {row['state']:<11} {row['attempts']} {row['sender'] or '-':<30} "
                   f"{row['message_id'] or '-'} {row['reason']}".rstrip())


@inbox_app.command("prune")
def inbox_prune(ctx: typer.Context,
                older_than: Annotated[int, typer.Option("--older-than", metavar="DAYS", min=0,
                                                        help="Mail handled more than DAYS days ago.")],
                dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say how much would go.")] = False
                ) -> None:
    """Remove the raw bytes of processed and ignored mail (their tickets keep text and attachments)."""
    engine = _context(ctx).engine()
    before = utcnow() - timedelta(days=older_than)
    pruned = prunable(engine, handled_before=before) if dry_run else prune_raw(engine, handled_before=before)
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} the raw bytes of {pruned.mails} mail{'' if pruned.mails == 1 else 's'} handled over "
               f"{older_than} days ago "
               f"({pruned.raw_bytes / 1e6:.1f} MB); {kept_raw_bytes(engine) / 1e6:.1f} MB of raw mail kept")


@inbox_app.command("retry")
def inbox_retry(ctx: typer.Context,
                inbox_id: Annotated[Optional[int], typer.Argument(metavar="ID")] = None,
                every: Annotated[bool, typer.Option("--all", help="Every failed, quarantined or held mail.")] = False
                ) -> None:
    """Process kept mail again (after a fix, or once its sender was added as a user)."""
    if (inbox_id is None) == (not every):
        fail("give an inbox ID or --all")
    context = _context(ctx)
    sizes = operations.requeue_inbox(context.engine(), inbox_id)
    if inbox_id is not None and not sizes:
        fail(f"inbox {inbox_id} is not failed, quarantined or held")
    pipeline = Pipeline(context.settings, context.engine())
    for group in groups(list(sizes), sizes):  # as a backlog: never every kept mail in memory at once
        for outcome in filter(None, pipeline.process_many(group)):
            typer.echo(f"inbox {outcome.inbox_id}: {outcome.state} {outcome.ticket or ''} {outcome.reason}".rstrip())


@app.command("check")
def check(ctx: typer.Context) -> None:
    """Check the configuration and connect to the database, IMAP and SMTP. Exit 0 only when all work."""
    results = operations.check_all(_context(ctx).settings)
    for result in results:
        typer.echo(f"{'ok  ' if result.ok else 'FAIL'} {result.name}{'' if result.ok else ': ' + str(result.problem)}")
    if not all(result.ok for result in results):
        raise typer.Exit(1)


@app.command("run")
def run(ctx: typer.Context) -> None:
    """Run the daemon: receive mail, process it, send the outbox, run the timers."""
    from maildesk.daemon import Daemon
    context = _context(ctx)
    _configure_logging(context.settings)
    daemon = Daemon(context.settings, context.engine())
    settings = context.settings
    embedded = not settings.imap_configured and not settings.smtp_configured
    typer.echo("maildesk is running" + (" on its embedded defaults" if embedded else "") + ":")
    for line in daemon.describe():
        typer.echo(f"  {line}")
    if "INVOCATION_ID" not in os.environ:  # started by hand (`make run`), not by systemd
        if not settings.imap_configured:
            typer.echo("  send a test mail from another terminal: .venv/bin/maildesk send-test --from demo@example.com")
        typer.echo("  stop with Ctrl-C")
    daemon.install_signal_handlers()
    daemon.run()


@app.command("poll")
def poll(ctx: typer.Context, once: Annotated[bool, typer.Option("--once", help="Fetch and process what is there now.")]
         = False) -> None:
    """Fetch mail from IMAP and process it (with --once: what is there now, then exit)."""
    from maildesk.imap import ImapError, ImapPoller
    from maildesk.parse_worker import parser_for
    from maildesk.wal import checkpoints_in_background
    context = _context(ctx)
    if not context.settings.imap_configured:
        fail("MAILDESK_IMAP_HOST is not set: there is no mailbox to poll")
    if not once:
        fail("use `maildesk run` for continuous polling, or `maildesk poll --once`")
    _configure_logging(context.settings)
    parser = parser_for(context.settings.parse_processes)
    pipeline = Pipeline(context.settings, context.engine(), parser=parser)
    with checkpoints_in_background(context.engine()), _progress() as progress:
        poller = ImapPoller(context.settings, pipeline, on_progress=progress)
        try:
            report = poller.poll_once()
        except ImapError as error:
            fail(str(error))
        finally:
            poller.close()
            parser.close()
    typer.echo(f"fetched {report.fetched}, new {report.stored_new}, processed {report.processed}, "
               f"quarantined {report.quarantined}, moved {report.moved}")


@app.command("send-test")
def send_test(ctx: typer.Context,
              sender: Annotated[str, typer.Option("--from", help="The sender (a known customer).")] = "demo@example.com",
              subject: Annotated[str, typer.Option()] = "Printeris nedrukā / The printer does not print",
              body: Annotated[str, typer.Option()] = "Labdien! The printer on the 3rd floor does not print.") -> None:
    """Send a test mail to the running LMTP listener, as a mail server would."""
    settings = _context(ctx).settings
    try:
        message_id = operations.send_test_mail(settings, sender, subject, body)
    except OSError as error:
        fail(f"cannot reach the LMTP listener on {settings.lmtp_host}:{settings.lmtp_port} "
             f"({error}); is `maildesk run` running?")
    typer.echo(f"delivered {message_id} from {sender}; see `maildesk ticket list` and {settings.sent_dir}/")


@app.command("demo-users")
def demo_users(ctx: typer.Context) -> None:
    """Add a demo organisation, customer (demo@example.com) and agent, once, for trying maildesk."""
    context = _context(ctx)
    with store.transaction(context.engine()) as session:
        if store.find_user("demo@example.com", session=session):
            typer.echo("demo users already exist")
            return
        add_organisation("Demo Ltd", session=session, domains=["example.com"], language="en", service_level=None)
        add_user("demo@example.com", session=session, name="Demo Customer", now=utcnow(), organisation="Demo Ltd",
                 agent=False, responsible=True, language="en")
        add_user("agent@example.com", session=session, name="Demo Agent", now=utcnow(), organisation=None,
                 agent=True, responsible=False, language="en")
    typer.echo("added Demo Ltd with demo@example.com (responsible customer) and agent@example.com (agent)")


def _configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter() if _logging_to_journal() else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if logging.getLogger().level > logging.DEBUG:
        # aiosmtpd (the LMTP listener) logs each session command at INFO: eleven lines a mail,
        # and "Connection lost during _handle_client()" at every start. The daemon's own line a
        # mail says what happened; MAILDESK_LOG_LEVEL=debug shows the sessions again.
        logging.getLogger("mail.log").setLevel(logging.WARNING)


class _JournalFormatter(logging.Formatter):
    """Lines for journald: it stamps the time itself, and reads a `<N>` prefix as the line's
    priority, so `journalctl -u maildesk -p warning` shows only warnings and errors."""

    PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = self.PRIORITIES.get(record.levelno, 6)
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


def _logging_to_journal() -> bool:
    """stderr is systemd's journal stream ($JOURNAL_STREAM names its device and inode)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(sys.stderr.fileno())
        return bool(inode) and (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


class _progress:
    """A progress bar on a terminal for a backlog; silent otherwise."""

    def __enter__(self) -> Any:
        self.bar: Any = None
        return self

    def __call__(self, done: int, total: int) -> None:
        if total < 20 or not sys.stderr.isatty():
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="processing", file=sys.stderr).__enter__()
        self.bar.update(done - self.bar.pos)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _check_language(language: str | None) -> None:
    if language is not None and language not in ("lv", "en"):
        fail(f"--language must be lv or en, not {language!r}")


def main() -> None:
    """Entry point: configuration and database problems end with a clear line, not a traceback."""
    try:
        app()
    except ConfigError as error:
        typer.echo(f"maildesk: configuration error: {error}", err=True)
        sys.exit(EX_CONFIG)
    except (store.DatabaseNotReady, store.DatabaseUnavailable) as error:
        typer.echo(f"maildesk: {error}", err=True)
        sys.exit(1)
