"""Parsing beside the pipeline: the parse stage of a batch runs in a helper process.

Flow: inbox rows -> **parse and examine (here, in another process)** -> route -> ... in the main
process. Parsing and quote stripping are the CPU-heaviest stage (a few ms per mail) and need no
database, nor does examining the parsed mail (`examine`); with them on the second core the main
process routes, stores and renders the mails already parsed while the next ones are read.
`Pipeline.prepare` hands a batch to `ProcessParser.parse_many`; `Pipeline.finish` handles each
result as it arrives, in order.

The mails of a batch go to the helper as soon as the batch is prepared (`Pipeline.prepare`),
so a backlog's next group is parsed while the current one is processed. A batch of one mail
(the LMTP listener, `maildesk ingest`) is parsed in-process: the round trip would only add
latency. If the helper dies (a parser crash, the OOM killer) the batch is parsed in-process
instead and a new helper starts with the next batch; nothing is lost.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from maildesk.examine import Examined, Examiner
from maildesk.helper_process import start_helper
from maildesk.parse import ParseError, parse_mail

log = logging.getLogger("maildesk.parse_worker")
MAX_ATTEMPTS = 3
CHUNK = 4  # mails per round trip to the helper: fewer trips, yet the first result comes soon

Parsed = Examined | tuple[str, bool]  # the mail, or (reason, quarantine now?)


def parse_or_reason(raw: bytes, attempts: int, examiner: Examiner) -> Parsed:
    """The parsed and examined mail, or why it cannot be parsed and whether to quarantine it at once."""
    try:
        return examiner(parse_mail(raw))
    except ParseError as error:
        return f"cannot parse: {error}", True
    except Exception as error:  # a parser bug must not stop the loop
        return f"parser error: {type(error).__name__}: {error}", attempts >= MAX_ATTEMPTS


class InProcessParser:
    """Parses in the calling thread: pipe mode, tests, and MAILDESK_PARSE_PROCESSES=0."""

    def parse_many(self, raws: Sequence[bytes], attempts: Sequence[int], examiner: Examiner) -> Iterator[Parsed]:
        return map(parse_or_reason, raws, attempts, itertools.repeat(examiner))

    def close(self) -> None:
        """Nothing runs beside us."""


class ProcessParser:
    """Parses batches in `processes` helper processes, started on first use (spawn: the daemon
    has threads, which a fork would copy mid-flight)."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._started: Future[int] | None = None

    def start(self) -> None:
        """Start the helpers now (the daemon does, so the first mail does not wait for them);
        they start up while the caller goes on, until `wait_started`."""
        try:
            self._started = self._executor().submit(int)
        except (OSError, BrokenProcessPool) as error:
            self._give_up(error)

    def wait_started(self) -> None:
        """Return once the helpers answer. Where none can be started (no /dev/shm, a sandbox
        refusing it) parsing stays in-process."""
        started, self._started = self._started, None
        if started is None:
            return
        try:
            started.result()
        except (OSError, BrokenProcessPool) as error:
            self._give_up(error)

    def _give_up(self, error: BaseException) -> None:
        log.warning("cannot start a parser process (%s); parsing in the daemon's own process", error)
        self._discard()
        self.processes = 0

    def parse_many(self, raws: Sequence[bytes], attempts: Sequence[int], examiner: Examiner) -> Iterator[Parsed]:
        """The results in order. The mails go to the helper now, not when the first result is
        asked for: it parses them while the caller finishes the batch before."""
        if len(raws) < 2 or self.processes == 0:
            return map(parse_or_reason, raws, attempts, itertools.repeat(examiner))
        try:
            results = self._executor().map(parse_or_reason, raws, attempts, itertools.repeat(examiner),
                                           chunksize=CHUNK)
        except BrokenProcessPool:  # the helper died after the last batch: parse this one here
            log.error("the parser process is gone; parsing %d mail(s) of this batch in-process", len(raws))
            self._discard()
            return map(parse_or_reason, raws, attempts, itertools.repeat(examiner))
        return self._collect(results, raws, attempts, examiner)

    def _collect(self, results: Iterator[Parsed], raws: Sequence[bytes], attempts: Sequence[int],
                 examiner: Examiner) -> Iterator[Parsed]:
        done = 0
        try:
            for result in results:
                done += 1
                yield result
        except BrokenProcessPool:
            log.error("the parser process died; parsing %d mail(s) of this batch in-process", len(raws) - done)
            self._discard()
            yield from map(parse_or_reason, raws[done:], attempts[done:], itertools.repeat(examiner))

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=start_helper, initargs=(os.getpid(),))
        return self._pool

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def parser_for(processes: int) -> InProcessParser | ProcessParser:
    return ProcessParser(processes) if processes > 0 else InProcessParser()
