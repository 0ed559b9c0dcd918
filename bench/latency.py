"""Latency of one mail through `maildesk run`: (c) APPEND to IMAP with the poller in IDLE, and
(d) LMTP DATA, each until the acknowledgement reaches the SMTP sink.

Mails go in one at a time, spaced apart, so each measures an idle daemon answering one mail
(not a queue). The clock is the wall clock on both sides (one machine): the sink stamps each
message when its DATA completes. The first mail warms the daemon (templates compile, the SMTP
connection opens) and is reported separately, not in the percentiles.
"""

from __future__ import annotations

import email.parser
import email.policy
import smtplib
import time
from collections.abc import Callable
from typing import Any

from common import (SUPPORT_ADDRESS, CorpusMail, base_env, fresh_workdir, imap_env, latency_summary,
                    prepare_desk, print_header, print_rows, servers, verdict)

TARGET_C_P99 = 0.6
TARGET_D_P99 = 0.050
ACK_TIMEOUT_SECONDS = 30.0


def originals(mails: list[CorpusMail], count: int) -> list[CorpusMail]:
    """`count` new-ticket mails (each gets exactly one acknowledgement to its sender)."""
    chosen = [mail for mail in mails if mail.kind == "orig"][:count]
    if len(chosen) < count:
        raise SystemExit(f"the corpus has only {len(chosen)} originals, {count} asked for")
    return chosen


def wait_for_ack(sink: Any, mail: CorpusMail, timeout: float = ACK_TIMEOUT_SECONDS) -> float:
    """The sink's receive time of the acknowledgement to `mail` (to its sender, In-Reply-To it)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        messages = sink.messages
        for message in messages[seen:]:
            if mail.sender in [r.lower() for r in message.recipients] and _in_reply_to(message.raw) == mail.message_id:
                return float(message.received_at)
        seen = len(messages)
        time.sleep(0.002)  # the receive time comes from the sink, so this poll does not skew the figure
    raise TimeoutError(f"no acknowledgement to {mail.sender} for {mail.message_id} within {timeout:.0f} s")


def _in_reply_to(raw: bytes) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    return str(headers.get("In-Reply-To", "")).strip()


def measure(mails: list[CorpusMail], send: Callable[[CorpusMail], float], sink: Any,
            spacing: float) -> tuple[list[float], float, list[str]]:
    """Send each mail, wait for its acknowledgement, keep (receive - send) per mail after the first.

    Returns the latencies, the warm-up mail's latency and the failures (kept, not hidden).
    """
    latencies: list[float] = []
    failures: list[str] = []
    warmup = float("nan")
    for number, mail in enumerate(mails):
        next_at = time.monotonic() + spacing
        sent_at = send(mail)
        try:
            latency = wait_for_ack(sink, mail) - sent_at
        except TimeoutError as error:
            failures.append(str(error))
            continue
        if number == 0:
            warmup = latency
        else:
            latencies.append(latency)
        time.sleep(max(0.0, next_at - time.monotonic()))
    return latencies, warmup, failures


def report_latency(label: str, latencies: list[float], warmup: float, failures: list[str], target: float,
                   extra: dict[str, Any]) -> dict[str, Any]:
    if not latencies:
        raise SystemExit(f"{label}: no acknowledgement arrived: {failures[:3]}")
    summary = latency_summary(latencies)
    ms = {key: round(value * 1000, 1) if key != "n" else value for key, value in summary.items()}
    print(f"{label}: n={ms['n']} p50 {ms['p50']} ms, p90 {ms['p90']} ms, p99 {ms['p99']} ms, max {ms['max']} ms, "
          f"min {ms['min']} ms; warm-up mail {warmup * 1000:.0f} ms; {len(failures)} without acknowledgement")
    for failure in failures[:5]:
        print(f"  missing: {failure}")
    met = summary["p99"] <= target and not failures
    row = (label, f"p50 {ms['p50']:.0f} ms, p99 {ms['p99']:.0f} ms (n={ms['n']}, max {ms['max']:.0f} ms"
           + (f", {len(failures)} lost" if failures else "") + ")", f"p99 ≤ {target * 1000:.0f} ms", verdict(met))
    result = {"ms": ms, "warmup_ms": round(warmup * 1000, 1), "failures": len(failures), "rows": [row], **extra}
    print_rows(result["rows"])
    return result


def scenario_c(corpus: list[CorpusMail], *, count: int, spacing: float) -> dict[str, Any]:
    """`maildesk run` idling in IMAP IDLE; APPEND one original at a time."""
    from tests.daemon_harness import DaemonProcess

    print_header(f"(c) APPEND -> acknowledgement at the SMTP sink, daemon in IDLE ({count} mails, {spacing} s apart)")
    mails = originals(corpus, count + 1)
    workdir = fresh_workdir("c")
    with servers(dovecot=True, smtp=True) as (dovecot, sink):
        env = {**base_env(workdir), **imap_env(dovecot), "MAILDESK_SMTP_HOST": "127.0.0.1",
               "MAILDESK_SMTP_PORT": str(sink.port)}  # type: ignore[attr-defined]
        _settings, engine = prepare_desk(workdir, env, corpus)
        engine.dispose()
        daemon = DaemonProcess(env, workdir)
        try:
            daemon.start()
            time.sleep(3.0)  # let the first (empty) poll finish and IDLE begin
            with dovecot.client() as imap:  # type: ignore[attr-defined]
                def append(mail: CorpusMail) -> float:
                    imap.append("INBOX", mail.raw)
                    return time.time()  # the mail is in the mailbox once APPEND is answered
                latencies, warmup, failures = measure(mails, append, sink, spacing)
        finally:
            if daemon.process is not None:
                daemon.stop()
            daemon.close()
    return report_latency("(c) APPEND -> ack at SMTP sink (IDLE)", latencies, warmup, failures, TARGET_C_P99,
                          {"spacing_s": spacing})


def scenario_d(corpus: list[CorpusMail], *, count: int, spacing: float) -> dict[str, Any]:
    """`maildesk run` with its LMTP listener; one LMTP session, one transaction per mail."""
    from tests.daemon_harness import DaemonProcess
    from tests.servers import free_port

    print_header(f"(d) LMTP DATA -> acknowledgement at the SMTP sink ({count} mails, {spacing} s apart)")
    mails = originals(corpus, count + 1)
    workdir = fresh_workdir("d")
    lmtp_port = free_port()
    data_answers: list[float] = []
    with servers(smtp=True) as (_dovecot, sink):
        env = {**base_env(workdir), "MAILDESK_LMTP_HOST": "127.0.0.1", "MAILDESK_LMTP_PORT": str(lmtp_port),
               "MAILDESK_SMTP_HOST": "127.0.0.1", "MAILDESK_SMTP_PORT": str(sink.port)}  # type: ignore[attr-defined]
        _settings, engine = prepare_desk(workdir, env, corpus)
        engine.dispose()
        daemon = DaemonProcess(env, workdir)
        try:
            daemon.start()
            with smtplib.LMTP("127.0.0.1", lmtp_port, timeout=30) as lmtp:
                def deliver(mail: CorpusMail) -> float:
                    # from the start of the transaction (MAIL FROM, RCPT, DATA): the MTA's view
                    started = time.time()
                    lmtp.sendmail(mail.sender, [SUPPORT_ADDRESS], mail.raw)
                    data_answers.append(time.time() - started)
                    return started
                latencies, warmup, failures = measure(mails, deliver, sink, spacing)
        finally:
            if daemon.process is not None:
                daemon.stop()
            daemon.close()
    answers = latency_summary(data_answers[1:]) if len(data_answers) > 1 else {}
    if answers:
        print(f"LMTP transaction answered (250 after commit): p50 {answers['p50'] * 1000:.1f} ms, "
              f"p99 {answers['p99'] * 1000:.1f} ms")
    return report_latency("(d) LMTP DATA -> ack at SMTP sink", latencies, warmup, failures, TARGET_D_P99,
                          {"spacing_s": spacing, "lmtp_answer_ms": {k: round(v * 1000, 1) if k != "n" else v
                                                                    for k, v in answers.items()}})
