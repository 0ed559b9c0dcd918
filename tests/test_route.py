"""Routing: subject token first, then threading headers, else a new ticket."""

from __future__ import annotations

import pytest

from maildesk.core.route import Ignore, NewTicket, Reply, is_new_user_request, route, subject_key, thread_ids


@pytest.mark.parametrize("subject, key", [
    ("Re: [SD-123] Printer", "SD-123"), ("AW: Fwd: [sd-7] x", "SD-7"), ("[ SD - 42 ]", "SD-42"),
    ("Printer [SD-9] again", "SD-9"), ("SD-123 without brackets", None), ("[XX-1] other desk", None),
    ("[SD-007]", "SD-7"),
])
def test_the_subject_token_is_found_anywhere(subject: str, key: str | None) -> None:
    assert subject_key(subject, "SD") == key


def test_the_subject_wins_over_headers() -> None:
    assert route("Re: [SD-5] x", "SD", "SD-9") == Reply("SD-5", "subject")
    assert route("Re: x", "SD", "SD-9") == Reply("SD-9", "headers")
    assert route("Printer", "SD", None) == NewTicket(None)


def test_own_mail_is_ignored() -> None:
    assert isinstance(route("[SD-1] x", "SD", None, from_ourselves=True), Ignore)


@pytest.mark.parametrize("subject", ["Jauns Service Desk lietotājs", "jauns service desk lietotajs",
                                     "Fwd: New Service Desk user", "JAUNS  SERVICE DESK LIETOTĀJS"])
def test_new_user_requests_open_add_new_users_tickets(subject: str) -> None:
    assert is_new_user_request(subject)
    assert route(subject, "SD", None) == NewTicket("Add New Users")


def test_thread_ids_try_in_reply_to_first_then_newest_reference() -> None:
    assert thread_ids("<c@x>", ("<a@x>", "<b@x>", "<c@x>")) == ("<c@x>", "<b@x>", "<a@x>")


def test_a_verified_reply_token_wins_and_a_subject_key_counts_only_for_an_existing_ticket() -> None:
    assert route("Re: [SD-5] x", "SD", "SD-9", key_by_token="SD-7") == Reply("SD-7", "token")
    assert route("Re: [SD-5] x", "SD", "SD-9", exists=lambda key: False) == Reply("SD-9", "headers")
    assert route("[SD-999] Jauns Service Desk lietotājs", "SD", None, exists=lambda key: False) == NewTicket(
        "Add New Users")
