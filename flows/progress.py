"""Progress of long work on stderr: a rich bar on a terminal; elsewhere (a pipe, a file, a CI log)
a plain line at most every INTERVAL_S seconds and at the end, flushed, so a log shows the run move.

    with progress_bar("curate", total=len(shards), unit="shards") as advance:
        for shard in shards:
            ...
            advance()                    # on a pipe: "curate: 12/40 shards, 1m05s" now and then
    with heartbeat("sft"):               # on a pipe: "sft: running, 2m30s" when nothing else
        ...                              # printed a progress line for INTERVAL_S seconds
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

INTERVAL_S = 30.0
_last_line = [time.monotonic()]  # when a plain progress line was last printed, by anyone: heartbeat stays quiet meanwhile


def elapsed(seconds: float) -> str:
    """65 -> '1m05s', 3725 -> '1h02m05s', 7 -> '7s'."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _emit(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stderr, flush=True)
    _last_line[0] = time.monotonic()


class PlainProgress:
    """'label: done/total unit, elapsed' to a stream at most once per `interval` (by `clock`) and at close."""

    def __init__(self, label: str, total: int, unit: str = "", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = INTERVAL_S):
        self.label, self.total, self.unit, self.stream = label, total, f" {unit}" if unit else "", stream
        self.clock, self.interval = clock, interval
        self.done, self.shown = 0, -1
        self.started = self.last = clock()
        self.lock = threading.Lock()  # advance may come from worker threads (the sample crawl)

    def advance(self, n: int = 1) -> None:
        with self.lock:
            self.done += n
            if self.clock() - self.last >= self.interval:
                self._print()

    def close(self) -> None:
        with self.lock:
            if self.shown != self.done:  # not twice the same last line
                self._print()

    def _print(self) -> None:
        self.last, self.shown = self.clock(), self.done
        _emit(f"{self.label}: {self.done}/{self.total}{self.unit}, {elapsed(self.last - self.started)}", self.stream)


@contextmanager
def progress_bar(label: str, total: int, enabled: bool = True, unit: str = "") -> Iterator[Callable[[int], None]]:
    console = Console(stderr=True)
    if not enabled:
        yield lambda n=1: None
        return
    if not console.is_terminal:
        plain = PlainProgress(label, total, unit)
        yield plain.advance
        plain.close()
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task_id = progress.add_task(label, total=total)
        yield lambda n=1: progress.advance(task_id, n)


@contextmanager
def heartbeat(label: str, enabled: bool = True, interval: float = INTERVAL_S) -> Iterator[None]:
    """While the block runs and stderr is not a terminal: 'label: running, 2m30s' whenever no plain
    progress line was printed for `interval` seconds (stages whose steps log only to Prefect and MLflow)."""
    if not enabled or Console(stderr=True).is_terminal:
        yield
        return
    started, stop = time.monotonic(), threading.Event()

    def beat() -> None:
        while not stop.wait(max(interval / 100, _last_line[0] + interval - time.monotonic())):
            if time.monotonic() - _last_line[0] >= interval:
                _emit(f"{label}: running, {elapsed(time.monotonic() - started)}")

    thread = threading.Thread(target=beat, name=f"heartbeat-{label}", daemon=True)
    _last_line[0] = started  # the stage's start line was just printed
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
