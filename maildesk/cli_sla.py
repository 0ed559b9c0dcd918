"""Command line for service levels, the timers and the reports (mounted by `maildesk.cli`).

`maildesk sla add|list|close-day`, `maildesk org set`, `maildesk tick [--now]`,
`maildesk report sla|invoice`. Each command is a few lines over `sla`, `timers`, `reports`.
The commands get settings and the engine from the `Context` object `maildesk.cli` puts in
`ctx.obj`.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Annotated, Any, Optional

import typer

from maildesk import store
from maildesk.deadlines import reschedule_open
from maildesk.models import utcnow
from maildesk.notify import Notifier
from maildesk.render import Renderer, default_templates_dir
from maildesk.reports import invoice_report, period, sla_report
from maildesk.sla import SlaError, add_level, close_day, list_levels, organisations_using, set_organisation_level
from maildesk.timers import sweep

sla_app = typer.Typer(help="Service levels and the business calendar.", no_args_is_help=True)
report_app = typer.Typer(help="Monthly reports.", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.echo(f"maildesk: {message}", err=True)
    raise typer.Exit(1)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, ensure_ascii=False, indent=2))


@sla_app.command("add")
def sla_add(ctx: typer.Context, name: str,
            first_response: Annotated[str, typer.Option("--first-response", help="Business time, e.g. 4h.")],
            work_start: Annotated[str, typer.Option("--work-start", help="After ESTIMATE ACCEPTED, e.g. 2d.")],
            acceptance_term: Annotated[str, typer.Option("--acceptance-term", help="Until auto-close, e.g. 5d.")],
            hours: Annotated[str, typer.Option(help="Business hours, e.g. 'Mon-Fri 09:00-17:00'.")]
            = "Mon-Fri 09:00-17:00",
            zone: Annotated[str, typer.Option("--timezone", help="IANA time zone.")] = "Europe/Riga",
            country: Annotated[str, typer.Option("--holidays", help="Public holidays of this country; '' none.")]
            = "LV",
            replace: Annotated[bool, typer.Option("--replace", help="Change an existing level.")] = False) -> None:
    """Add a service level. Durations count business time only: 4h, 90m; 2d = business days."""
    with store.transaction(ctx.obj.engine()) as session:
        try:
            level = add_level(name, session=session, first_response=first_response, work_start=work_start,
                              acceptance_term=acceptance_term, hours=hours, timezone=zone, country=country,
                              now=utcnow(), replace=replace)
        except SlaError as error:
            _fail(str(error))
        moved = reschedule_open(session=session, settings=ctx.obj.settings,
                                organisation_ids=list(organisations_using(name, session=session,
                                                                          settings=ctx.obj.settings)))
    typer.echo(f"service level {'changed' if replace else 'added'}: {level.name}"
               + (f" ({moved} open tickets rescheduled)" if moved else ""))


@sla_app.command("list")
def sla_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List service levels (the default one is marked)."""
    settings = ctx.obj.settings
    with store.transaction(ctx.obj.engine()) as session:
        rows = [level.row() | {"default": level.name == settings.default_service_level}
                for level in list_levels(session=session, settings=settings)]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        mark = " (default)" if row["default"] else ""
        typer.echo(f"{row['name']}{mark}: first response {row['first_response']}, work start {row['work_start']}, "
                   f"acceptance term {row['acceptance_term']}; {row['hours']} {row['timezone']}, "
                   f"holidays {row['holidays'] or 'none'}")


@sla_app.command("close-day")
def sla_close_day(ctx: typer.Context, day: Annotated[str, typer.Argument(metavar="DATE", help="YYYY-MM-DD")],
                  reason: Annotated[str, typer.Option(help="Why the desk is closed.")] = "") -> None:
    """Close the desk on a date besides the public holidays; open deadlines move."""
    try:
        closed = date.fromisoformat(day)
    except ValueError:
        _fail(f"{day!r} is not a date (write YYYY-MM-DD)")
    with store.transaction(ctx.obj.engine()) as session:
        added = close_day(closed, reason, session=session, now=utcnow())
        moved = reschedule_open(session=session, settings=ctx.obj.settings) if added else 0
    typer.echo(f"closed on {closed.isoformat()}" + ("" if added else " (already)")
               + (f"; {moved} open tickets rescheduled" if moved else ""))


def org_set(ctx: typer.Context, name: str,
            service_level: Annotated[str, typer.Option("--service-level", help="A level from `sla list`.")]) -> None:
    """Change an organisation's service level; its open tickets' deadlines move."""
    with store.transaction(ctx.obj.engine()) as session:
        try:
            organisation = set_organisation_level(name, service_level, session=session, settings=ctx.obj.settings)
        except SlaError as error:
            _fail(str(error))
        moved = reschedule_open(session=session, settings=ctx.obj.settings, organisation_ids=[organisation.id])
    typer.echo(f"organisation {organisation.name}: service level {organisation.service_level}"
               + (f" ({moved} open tickets rescheduled)" if moved else ""))


def tick(ctx: typer.Context, now: Annotated[Optional[str], typer.Option(
        "--now", help="Run as if it were this moment (ISO-8601; without an offset: MAILDESK_TIMEZONE).")] = None
         ) -> None:
    """Run the timers once: auto-close, reminders, deadline warnings and breaches."""
    settings = ctx.obj.settings
    moment = utcnow() if now is None else _moment(now, settings.tz)
    notifier = Notifier(settings, Renderer(default_templates_dir(), settings.template_cache_dir))
    report = sweep(ctx.obj.engine(), settings, notifier, now=moment)
    typer.echo(f"timers at {moment.isoformat()}: {report}")
    if report.failed:
        raise typer.Exit(1)


def _moment(text: str, zone: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        _fail(f"--now {text!r} is not an ISO-8601 moment such as 2026-11-20T16:30:00+02:00")
    return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(timezone.utc)


def _dates(first: str | None, last: str | None) -> tuple[date | None, date | None]:
    try:
        return (date.fromisoformat(first) if first else None, date.fromisoformat(last) if last else None)
    except ValueError:
        _fail("--from and --to take dates like 2026-11-01")
    raise AssertionError("unreachable")


@report_app.command("sla")
def report_sla(ctx: typer.Context,
               first: Annotated[Optional[str], typer.Option("--from", help="First date (default: last month).")]
               = None,
               last: Annotated[Optional[str], typer.Option("--to", help="Last date, included.")] = None,
               org: Annotated[Optional[str], typer.Option("--org", help="Only this organisation.")] = None,
               as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tickets created in the period: response and start times against targets, breaches, auto-closed."""
    settings = ctx.obj.settings
    span = period(*_dates(first, last), utcnow().astimezone(settings.tz).date())
    with store.transaction(ctx.obj.engine()) as session:
        report = sla_report(session=session, settings=settings, span=span, organisation=org)
    if as_json:
        _print_json(report)
        return
    typer.echo(f"SLA {report['from']} .. {report['to']}")
    for row in report["organisations"]:
        typer.echo(f"{row['organisation']} [{row['service_level']}]: {row['tickets']} tickets; first response "
                   f"{row['responded_in_time']}/{row['tickets']} within {row['first_response_target']} "
                   f"(average {row['first_response_average_minutes']} min), {row['first_response_breaches']} breached;"
                   f" work start {row['started_in_time']}/{row['started']} within {row['work_start_target']}, "
                   f"{row['work_start_breaches']} breached; auto-closed {row['auto_closed']}")


@report_app.command("invoice")
def report_invoice(ctx: typer.Context,
                   first: Annotated[Optional[str], typer.Option("--from", help="First date (default: last month).")]
                   = None,
                   last: Annotated[Optional[str], typer.Option("--to", help="Last date, included.")] = None,
                   as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tickets that reached INVOICE or were auto-accepted in the period, with estimates."""
    settings = ctx.obj.settings
    span = period(*_dates(first, last), utcnow().astimezone(settings.tz).date())
    with store.transaction(ctx.obj.engine()) as session:
        report = invoice_report(session=session, settings=settings, span=span)
    if as_json:
        _print_json(report)
        return
    typer.echo(f"Invoice {report['from']} .. {report['to']}")
    for group in report["organisations"]:
        typer.echo(f"{group['organisation']}: {group['count']} tickets, estimates {group['estimate_minutes']} min")
        for row in group["tickets"]:
            typer.echo(f"  {row['key']:<10} {row['at']} {row['reached']:<14} {row['estimate'] or '-':<7} "
                       f"{row['summary']}")
