"""The datatrove peer of bench/curate.py: run huggingface/datatrove 0.10.1 on the same WARCs with
the same worker count, in its own venv, and return its numbers.

    from bench.peer import run_datatrove
    result = run_datatrove([Path("a.warc.gz"), ...], workers=2, out_dir=Path("bench/out/datatrove"))
    # {"tool": "datatrove", "version": "0.10.1", "docs_in": ..., "docs_out": ..., "seconds": ...,
    #  "docs_per_s": ..., "peak_rss_mb": ..., ...}

or by hand, from the repo root, with the project's venv:

    .venv/bin/python bench/peer.py --workers 2 --out bench/out/datatrove /work/shared/data/warc/*.warc.gz

This module runs in the project's venv and imports nothing from datatrove. It makes sure the peer
venv exists (bench/setup_peer_venv.sh, once per process; ~35 s the first time, ~1.5 s to check it
afterwards), then runs bench/datatrove_peer.py with that venv's python as a subprocess and parses
the one JSON line it prints. datatrove's own logs go to OUT/datatrove.stderr.log (the console
output) and OUT/logs/ (per-task logs, stats.json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SETUP_SCRIPT = BENCH / "setup_peer_venv.sh"
PEER_SCRIPT = BENCH / "datatrove_peer.py"
DEFAULT_VENV = BENCH / ".venvs" / "datatrove"

_ready: set[Path] = set()


@contextmanager
def stdout_to_stderr():
    """Send fd 1 (and so anything datatrove, trafilatura or a worker prints) to stderr, so that
    the peer scripts' stdout holds only their one JSON line. Stdlib only: the peer scripts import
    it inside the datatrove venv (`from peer import stdout_to_stderr`, bench/ being on sys.path)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _clean_env() -> dict[str, str]:
    """The environment for the peer: without the project venv's activation or import paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def ensure_venv(venv_dir: Path = DEFAULT_VENV) -> Path:
    """Create/check the peer venv (once per process) and return its python."""
    venv_dir = Path(venv_dir).resolve()
    python = venv_dir / "bin" / "python"
    if venv_dir in _ready:
        return python
    print(f"[peer] checking the datatrove venv {venv_dir} (first time: installs, ~35 s)", file=sys.stderr)
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT), str(venv_dir)], capture_output=True, text=True, env=_clean_env()
    )
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    _ready.add(venv_dir)
    return python


def run_datatrove(warcs: list[Path], workers: int, out_dir: Path, *, venv_dir: Path = DEFAULT_VENV,
                  timeout: float | None = None) -> dict:
    """Run datatrove's WarcReader -> Trafilatura -> English (py3langid) -> Gopher/C4/FineWeb filters
    -> JsonlWriter pipeline over `warcs` with `workers` processes (one task per file), writing to
    `out_dir`; return the dict that bench/datatrove_peer.py prints (see its docstring)."""
    if not warcs:
        raise ValueError("run_datatrove needs at least one WARC file")
    python = ensure_venv(venv_dir)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "datatrove.stderr.log"
    cmd = [str(python), str(PEER_SCRIPT), "--workers", str(int(workers)), "--out", str(out_dir),
           *(str(Path(w).resolve()) for w in warcs)]
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=_clean_env(),
                              timeout=timeout)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"datatrove peer failed with exit code {proc.returncode} (log: {log_path}):\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"datatrove peer printed nothing on stdout (log: {log_path})")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        raise RuntimeError(f"datatrove peer printed no JSON: {lines[-1][:500]!r} (log: {log_path})") from e


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Run the datatrove peer and print its JSON result.")
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("warcs", type=Path, nargs="+")
    a = ap.parse_args()
    print(json.dumps(run_datatrove(a.warcs, a.workers, a.out)))
