"""The outbox sender alone: deliveries/s of `send_due` to the aiosmtpd sink, with and without a
CPU-bound thread in the same process (the daemon's poller shares the sender's GIL).

A fresh SQLite desk gets `--rows` realistic outbox rows (Latvian text and HTML, one or two
recipients, threaded replies); the sink from tests/servers.py runs in a separate process, as in
(b). The clock runs around `while send_due(...).sent: pass` until no row is pending. With
`--busy`, a thread spins on pure-Python work meanwhile and its own rate is reported too, so the
cost the sender puts on the poller shows as well.

    .venv/bin/python bench/sender.py                  # sender alone
    .venv/bin/python bench/sender.py --busy           # beside a CPU-bound thread
    .venv/bin/python bench/sender.py --busy --switch-interval 0.005   # the interpreter default
    .venv/bin/python bench/sender.py --no-pipelining  # a sink without PIPELINING (RFC 2920)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert, select  # noqa: E402

from maildesk import store  # noqa: E402
from maildesk.config import load_settings  # noqa: E402
from maildesk.models import OutboxItem  # noqa: E402
from maildesk.outbox import send_due  # noqa: E402
from maildesk.smtp import SmtpTransport  # noqa: E402
from tests.servers import free_port, wait_for_port  # noqa: E402

SINK = """
import sys, time
from tests.servers import SmtpSink
sink = SmtpSink(port=int(sys.argv[1]), chunked_data=True, pipelining=sys.argv[2] == "pipelining")
sink.start()
for line in sys.stdin:
    print(len(sink.messages), flush=True)
"""
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)
TEXT = ("Labdien, Jāni!\n\nMēs saņēmām jūsu pieprasījumu \"Printeris nedrukā\" un reģistrējām to ar numuru "
        "SD-{n}. Atbildiet uz šo vēstuli, lai papildinātu pieprasījumu; rindiņas, kas sākas ar\nkomandu "
        "(piemēram, #close), tiek izpildītas.\n\n" + "Šī ir automātiski sūtīta vēstule. " * 12 +
        "\n\nAr cieņu,\nServisa dienests\n")
HTML = ("<!doctype html><html><body><p>Labdien, Jāni!</p><p>Mēs saņēmām jūsu pieprasījumu "
        "<b>Printeris nedrukā</b> un reģistrējām to ar numuru <b>SD-{n}</b>.</p>"
        + "<p>Šī ir automātiski sūtīta vēstule.</p>" * 12
        + "<p>Ar cieņu,<br>Servisa dienests</p></body></html>\n")


def queue_rows(engine, rows: int) -> None:
    values = []
    for n in range(rows):
        reply = n % 3 != 0
        values.append(dict(
            message_id=f"<sd-{n}.{n:08x}@servicedesk.example>", ticket_id=None,
            in_reply_to=f"<orig{n}@client.example>" if reply else "",
            references=f"<first{n}@client.example> <orig{n}@client.example>" if reply else "",
            to_addresses=json.dumps([f"c{n % 200}@acme.example"] + ([f"boss{n % 7}@acme.example"] * (n % 4 == 0))),
            reply_to=f"support+sd-{n}.a1b2c3d4@servicedesk.example",
            subject=f"[SD-{n}] Re: Printeris nedrukā — pieprasījums reģistrēts", template="ticket_created",
            language="lv", body_text=TEXT.format(n=n), body_html=HTML.format(n=n), status="pending", attempts=0,
            next_attempt_at=T0, last_error="", recipient_results="{}", created_at=T0))
    with store.transaction(engine) as session:
        session.execute(insert(OutboxItem), values)


def busy(stop: threading.Event, counter: list[int]) -> None:
    """Pure-Python CPU work, as the poller's parsing and ORM work is: never releases the GIL."""
    while not stop.is_set():
        total = 0
        for i in range(2000):
            total += i * i % 7
        counter[0] += 1


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (fields 14 and 15 of proc(5)'s stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace, sink_port: int, sink_pid: int) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="maildesk-sender-"))
    settings = load_settings(environ={
        "MAILDESK_DATA_DIR": str(workdir), "MAILDESK_SUPPORT_ADDRESS": "support@servicedesk.example",
        "MAILDESK_BOUNCE_ADDRESS": "bounces@servicedesk.example", "MAILDESK_SMTP_HOST": "127.0.0.1",
        "MAILDESK_SMTP_PORT": str(sink_port)})
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine)
    queue_rows(engine, args.rows)
    transport = SmtpTransport(settings)
    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=busy, args=(stop, counter), daemon=True) if args.busy else None
    if thread:
        thread.start()
        time.sleep(0.2)
    now = T0 + timedelta(seconds=1)
    counted = counter[0]
    cpu, sink_cpu = own_cpu_seconds(), process_cpu_seconds(sink_pid)
    started = time.perf_counter()
    while send_due(engine, settings, transport, now=now, worker="bench").sent:
        pass
    elapsed = time.perf_counter() - started
    cpu, sink_cpu = own_cpu_seconds() - cpu, process_cpu_seconds(sink_pid) - sink_cpu
    busy_rate = (counter[0] - counted) / elapsed
    stop.set()
    transport.close()
    with store.transaction(engine) as session:
        unsent = session.execute(select(func.count()).select_from(OutboxItem)
                                 .where(OutboxItem.status != "sent")).scalar_one()
    engine.dispose()
    return {"seconds": elapsed, "rate": args.rows / elapsed, "unsent": unsent, "busy_rate": busy_rate,
            "cpu_ms": 1000 * cpu / args.rows, "sink_cpu_ms": 1000 * sink_cpu / args.rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--busy", action="store_true", help="a CPU-bound thread runs beside the sender")
    parser.add_argument("--no-pipelining", action="store_true", help="the sink does not offer PIPELINING")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (default: what maildesk sets, else the interpreter's)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    port = free_port()
    offer = "plain" if args.no_pipelining else "pipelining"
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port), offer], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for_port(port, process=sink, what="SMTP sink")  # type: ignore[arg-type]
        idle = []
        if args.busy:  # the busy thread's rate alone, to show what the sender costs it
            stop, counter = threading.Event(), [0]
            thread = threading.Thread(target=busy, args=(stop, counter), daemon=True)
            thread.start()
            time.sleep(1.0)
            stop.set()
            thread.join()
            idle.append(counter[0] / 1.0)
        results = []
        for attempt in range(args.repeat):
            result = run(args, port, sink.pid)
            assert sink.stdin and sink.stdout
            sink.stdin.write("count\n")
            sink.stdin.flush()
            at_sink = int(sink.stdout.readline())
            results.append(result)
            print(f"run {attempt + 1}: {args.rows} rows in {result['seconds']:.2f} s = {result['rate']:.0f} "
                  f"deliveries/s, unsent {result['unsent']}, sink total {at_sink}; CPU a delivery: sender "
                  f"{result['cpu_ms']:.3f} ms (its whole process), sink {result['sink_cpu_ms']:.3f} ms"
                  + (f", busy thread at {result['busy_rate']:.0f} loops/s (alone {idle[0]:.0f})" if args.busy else ""),
                  flush=True)
        best = max(results, key=lambda r: r["rate"])
        print(f"best: {best['rate']:.0f} deliveries/s (switch interval {sys.getswitchinterval() * 1000:.2f} ms, "
              f"busy={args.busy})")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
