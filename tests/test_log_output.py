"""What reaches a log when the output is not a terminal (`make demo > log`, a CI job): lines as they
happen, not all at exit, and a plain progress line now and then instead of a silent rich bar.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from flows.progress import PlainProgress, elapsed, heartbeat, progress_bar
from tests.conftest import shared


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_prints_at_most_once_per_interval_and_at_the_end():
    clock, stream = FakeClock(), io.StringIO()
    progress = PlainProgress("curate", total=40, unit="shards", stream=stream, clock=clock, interval=30)
    for _ in range(12):  # 12 shards in 24 s: nothing yet
        clock.now += 2
        progress.advance()
    assert stream.getvalue() == ""
    clock.now += 41  # 65 s in: the 13th shard prints
    progress.advance()
    clock.now += 10
    progress.advance(5)  # 10 s after the last line: quiet
    assert stream.getvalue() == "curate: 13/40 shards, 1m05s\n"
    clock.now += 3600
    progress.advance(22)  # due again
    progress.close()  # the end is on the line just printed: not twice
    assert stream.getvalue().splitlines() == ["curate: 13/40 shards, 1m05s", "curate: 40/40 shards, 1h01m15s"]

    stream = io.StringIO()
    quick = PlainProgress("dedup", total=2, stream=stream, clock=clock)
    quick.advance(2)
    quick.close()  # work shorter than the interval still ends with its line
    assert stream.getvalue() == "dedup: 2/2, 0s\n"


def test_elapsed():
    assert [elapsed(s) for s in (0, 7, 65, 3725)] == ["0s", "7s", "1m05s", "1h02m05s"]


def test_off_a_terminal_the_bar_becomes_plain_lines_and_the_heartbeat_beats(capsys):
    with progress_bar("encode", total=3, unit="shards") as advance:  # capsys: stderr is not a terminal
        for _ in range(3):
            advance()
    assert capsys.readouterr().err == "encode: 3/3 shards, 0s\n"

    with heartbeat("sft", interval=0.2):
        time.sleep(0.7)
    beats = capsys.readouterr().err.splitlines()
    assert 2 <= len(beats) <= 4 and all(re.fullmatch(r"sft: running, 0s", b) for b in beats), beats


@pytest.mark.slow
def test_a_piped_run_logs_each_stage_as_it_happens(tmp_path, prefect_server):
    pages = tmp_path / "pages"
    pages.mkdir()
    for page in sorted(shared("html", "articles").glob("*.html.gz"))[:8]:
        shutil.copy(page, pages / page.name)
    env = dict(os.environ, C2M_HOME=str(tmp_path / "root"), PREFECT_API_URL=prefect_server, COLUMNS="200")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_HOME", None)
    env.pop("PYTHONUNBUFFERED", None)  # the CLI must not rely on it
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--input", str(pages), "--until", "dedup",
                             "curate.workers=1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[tuple[float, str, str]] = []  # (arrival, stream, line)

    def read(pipe, name: str) -> None:
        for line in pipe:
            lines.append((time.monotonic(), name, line.rstrip("\n")))

    readers = [threading.Thread(target=read, args=(pipe, name)) for pipe, name in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for reader in readers:
        reader.start()
    proc.wait(timeout=600)
    exited = time.monotonic()
    for reader in readers:
        reader.join()
    text = "\n".join(f"{t - exited:7.2f} {name}: {line}" for t, name, line in lines)
    assert proc.returncode == 0, text[-3000:]

    def first(pattern: str, stream: str = "out") -> tuple[int, float]:
        found = [(i, t) for i, (t, name, line) in enumerate(lines) if name == stream and re.search(pattern, line)]
        assert found, f"no {stream} line matches {pattern!r}:\n{text}"
        return found[0]

    starting = first(r"^crawl2model: data root .*starting Prefect and MLflow")
    order = [first(p)[0] for p in (r"^== curate \(stage 1 of 2\)", r"^snapshot snap-.* documents curated", r"^== dedup \(stage 2 of 2\)",
                                   r"^dedup snap-", r"funnel")]
    assert starting[0] == 0 and order == sorted(order), text  # each stage's lines as it runs, the funnel at the end
    # Block-buffered, every line would arrive at exit; here the first came with the run's work still ahead.
    assert exited - starting[1] > 2.0, text
    assert first(r"^curate: 1/1, \d+s$", "err") and first(r"^dedup: 1/1, \d+s$", "err")  # plain progress lines, at their end
    assert "\x1b[" not in text  # no bar or colour codes in a log
