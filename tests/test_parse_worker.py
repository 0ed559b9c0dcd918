"""The parse stage in a helper process: same mails as in-process, and a dead helper loses nothing."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from maildesk.config import load_settings
from maildesk.core.tokens import make_token, reply_address
from maildesk.examine import Examiner
from maildesk.parse_worker import InProcessParser, ProcessParser, parse_or_reason
from tests.daemon_harness import wait_until
from tests.mailbuilder import make_mail

MAILS = [make_mail("anna@acme.example", f"Printeris {n} nedrukā", f"Labdien, printeris nr. {n} nestrādā.",
                   to="support@desk.example") for n in range(12)]
BROKEN = b"\x00\x01 not a mail"
SECRET = "a-secret-for-tests-only-0123456789abcdef"
EXAMINER = Examiner.of(load_settings(environ={"MAILDESK_SUPPORT_ADDRESS": "support@desk.example",
                                             "MAILDESK_SECRET_KEY": SECRET}))


@pytest.fixture
def helper() -> ProcessParser:
    parser = ProcessParser(1)
    parser.start()
    parser.wait_started()
    yield parser
    parser.close()


def test_the_helper_parses_a_batch_exactly_as_the_daemon_itself_would(helper: ProcessParser) -> None:
    batch = [*MAILS[:5], BROKEN, *MAILS[5:]]
    attempts = [0] * len(batch)
    in_process = list(InProcessParser().parse_many(batch, attempts, EXAMINER))
    assert list(helper.parse_many(batch, attempts, EXAMINER)) == in_process


def test_the_helper_examines_what_the_mail_says_by_itself(helper: ProcessParser) -> None:
    """Class, sender evidence (a reply token checked with the secret) and commands come back with
    the mail, so the daemon's own process need not work them out."""
    token = make_token(SECRET.encode(), ticket="SD-7", recipient="anna@acme.example", purpose="reply")
    reply = make_mail("anna@acme.example", "Re: [SD-7] Printeris", "RESOLVE\n\nPaldies!",
                      to=reply_address("support@desk.example", token))
    bounce = make_mail("mailer-daemon@mx.acme.example", "Undelivered Mail Returned to Sender", "gone",
                       to="support@desk.example")
    examined, machine = helper.parse_many([reply, bounce], [0, 0], EXAMINER)
    assert examined.sender.evidence.claims is not None and examined.sender.evidence.claims.ticket == "SD-7"
    assert [command.line for command in examined.commands.commands] == ["RESOLVE"]
    assert examined.classification.kind == "human"
    assert (machine.classification.kind, machine.classification.is_machine) == ("bounce", True)


def test_the_examiner_never_shows_the_secret() -> None:
    assert SECRET not in repr(EXAMINER) and SECRET not in str(EXAMINER)


def test_an_unparsable_mail_comes_back_as_its_reason_and_is_quarantined_at_once(helper: ProcessParser) -> None:
    results = list(helper.parse_many([MAILS[0], BROKEN], [0, 0], EXAMINER))
    assert results[1] == parse_or_reason(BROKEN, 0, EXAMINER)
    reason, quarantine = results[1]  # type: ignore[misc]
    assert reason.startswith("cannot parse:") and quarantine


def test_a_helper_that_dies_mid_batch_leaves_the_batch_parsed_in_process_and_is_replaced(
        helper: ProcessParser) -> None:
    (child,) = multiprocessing.active_children()
    results = helper.parse_many(MAILS, [0] * len(MAILS), EXAMINER)
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    expected = [parsed.mail.subject for parsed in map(parse_or_reason, MAILS, [0] * 12, [EXAMINER] * 12)]
    assert [parsed.mail.subject for parsed in results] == expected
    again = list(helper.parse_many(MAILS[:3], [0, 0, 0], EXAMINER))  # a new helper for the next batch
    assert [parsed.mail.subject for parsed in again] == [f"Printeris {n} nedrukā" for n in range(3)]
    assert [process.pid for process in multiprocessing.active_children()] != [child.pid]


def test_a_batch_goes_to_the_helper_before_its_first_result_is_asked_for() -> None:
    parser = ProcessParser(1)
    try:
        results = parser.parse_many(MAILS[:3], [0, 0, 0], EXAMINER)
        assert len(multiprocessing.active_children()) == 1  # started by handing the batch over, not by a next()
        assert [parsed.mail.subject for parsed in results] == [f"Printeris {n} nedrukā" for n in range(3)]
    finally:
        parser.close()


def test_one_mail_is_parsed_without_a_round_trip_to_the_helper() -> None:
    parser = ProcessParser(1)
    try:
        results = parser.parse_many(MAILS[:1], [0], EXAMINER)
        assert [parsed.mail.subject for parsed in results] == ["Printeris 0 nedrukā"]
        assert multiprocessing.active_children() == []  # nothing was started for it
    finally:
        parser.close()


def test_a_helper_leaves_when_the_daemon_that_started_it_is_killed() -> None:
    script = ("from maildesk.parse_worker import ProcessParser; import multiprocessing, sys; "
              "p = ProcessParser(1); p.start(); p.wait_started(); print(multiprocessing.active_children()[0].pid, flush=True); "
              "import time; time.sleep(60)")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        helper_pid = int(daemon.stdout.readline())  # type: ignore[union-attr]
        daemon.kill()
        daemon.wait(10)
        wait_until(lambda: not os.path.exists(f"/proc/{helper_pid}"), 10, what="the parser process gone")
    finally:
        daemon.kill()


def test_ctrl_c_in_a_terminal_leaves_the_helper_to_the_daemon(helper: ProcessParser) -> None:
    """The terminal sends SIGINT to the whole process group; the daemon stops the helper itself."""
    (process,) = multiprocessing.active_children()
    os.kill(process.pid, signal.SIGINT)
    assert [parsed.mail.subject for parsed in helper.parse_many(MAILS[:3], [0, 0, 0], EXAMINER)] == \
        ["Printeris 0 nedrukā", "Printeris 1 nedrukā", "Printeris 2 nedrukā"]
    assert multiprocessing.active_children() == [process]  # the same helper: it was not replaced


def test_the_helper_starts_while_the_caller_goes_on() -> None:
    parser = ProcessParser(1)
    try:
        parser.start()
        (process,) = multiprocessing.active_children()  # started, not yet waited for
        parser.wait_started()
        parser.wait_started()  # a second wait returns at once
        assert multiprocessing.active_children() == [process] and parser.processes == 1
    finally:
        parser.close()


def test_a_helper_of_the_installed_command_imports_no_more_than_parsing_needs() -> None:
    """multiprocessing's spawn runs the script that started the daemon again in each helper, as
    `__mp_main__` (`spawn._fixup_main_from_path`); the installed `maildesk` script must then not
    import the command line, the database layer and the rest (1 s and 44 MB per helper)."""
    script = Path(sys.executable).with_name("maildesk")
    if not script.exists():
        pytest.skip(f"no installed maildesk script beside {sys.executable} (make setup installs it)")
    code = (f"import runpy, sys; runpy.run_path({str(script)!r}, run_name='__mp_main__'); "
            "print(sorted(name for name in ('maildesk.cli', 'sqlalchemy', 'jinja2') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
