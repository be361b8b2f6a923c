"""Load benchmark of `crawl2model serve`: N concurrent clients on 127.0.0.1, then the server is stopped.

    .venv/bin/python bench/serve_load.py                          # --tiny: a model it makes itself, 8 clients, 200 requests
    .venv/bin/python bench/serve_load.py --clients 8 --seconds 60 --max-tokens 32
    .venv/bin/python bench/serve_load.py --gguf c2m-data/exports/.../gguf/model-q8_0.gguf
    .venv/bin/python bench/serve_load.py --alias champion --data-root c2m-data   # MLflow's model server

Starts `crawl2model serve` (flows/chat_cli.py) as a user would, on a free port of 127.0.0.1, waits
for its "serving" line, sends one warm-up request, then `--clients` threads (stdlib urllib) send
requests until `--requests` are done or `--seconds` have passed: with --gguf (and --tiny) the
OpenAI-compatible POST /v1/chat/completions of llama.cpp's server, with --alias MLflow's POST
/invocations. A request counts as an error when it raises (refused, reset, timed out), answers a
status other than 200, or its JSON holds no reply. Prints requests/s, reply tokens/s (gguf),
p50/p90/p99/max latency and the errors by kind; then Ctrl-C (SIGINT) to the CLI, which stops the
server, and checks the port is closed. Goal: zero errors at 8 clients. Exit 1 on any error.

--tiny (the default when no model is given) makes a random-init 1-layer model with a small BPE
tokenizer and exports it as an f32 GGUF under the work folder: it runs on a fresh clone with the
gguf extra (`pip install 'crawl2model[gguf]'`) and measures the serving path, not a model.
Results also go to bench/out/serve_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
sys.path.insert(0, str(REPO))

QUESTIONS = ["What is this website about?", "Tell me something about rivers.", "How do trains work?",
             "Why is the sky blue?", "Name a use of paper.", "What do cats eat?", "When does it rain?",
             "Who builds clocks?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_tiny_gguf(folder: Path) -> Path:
    """A random-init 1-layer Llama with a 400-token BPE, as an f32 GGUF with its chat template."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import ModelConfig
    from model.hf import tokenizer_folder
    from model.llama import Llama
    from model.to_gguf import export_gguf
    from model.tokenizer import load_tokenizer, save_tokenizer
    from tasks.bpe import train_tokenizer

    corpus = QUESTIONS + ["The old harbour town woke slowly. Fishermen mended their nets while gulls argued.",
                          "The answer is always forty two. Yes, gladly. No way, never."]
    tok_dir = save_tokenizer(train_tokenizer([corpus] * 8, vocab_size=400), folder / "tokenizer")
    torch.manual_seed(0)
    vocab = load_tokenizer(tok_dir).get_vocab_size()
    config = ModelConfig.from_preset("tiny", vocab_size=vocab, n_layers=1, max_seq_len=256)
    ckpt = save_checkpoint(folder / "ckpt" / "step-000000", Llama(config), None,
                           {"step": 0, "config": config.to_dict(), "tokenizer": str(tok_dir)})
    return export_gguf(ckpt, folder / "tiny-f32.gguf", "f32", tokenizer=tokenizer_folder(ckpt) / "tokenizer.json")


class Server:
    """`crawl2model serve ...` in its own session, its output in a log file; stop() is Ctrl-C."""

    def __init__(self, args: list[str], port: int, log: Path, timeout: float = 240.0):
        self.port, self.log = port, log
        env = {**os.environ, "COLUMNS": "200"}
        with log.open("w") as sink:
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args, "--port", str(port)], cwd=REPO,
                                         env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        # the CLI's own line, "serving <what> at <url>" ("serving" alone also matches llama.cpp's "reserving")
        ready = re.compile(rf"^serving .* at http://127\.0\.0\.1:{port}\b", re.M)
        deadline = time.monotonic() + timeout
        while not ready.search(log.read_text(errors="replace")):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start; the end of {log}:\n"
                                 + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
            time.sleep(0.3)

    def stop(self) -> int | None:
        """SIGINT to the CLI (it forwards the interrupt to the server's group), then SIGKILL if needed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


def request_body(kind: str, i: int, max_tokens: int) -> tuple[str, dict]:
    question = QUESTIONS[i % len(QUESTIONS)]
    if kind == "gguf":
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": question}],
                                        "max_tokens": max_tokens, "temperature": 0}
    return "/invocations", {"inputs": [question], "params": {"max_new_tokens": max_tokens, "temperature": 0.0}}


def one_request(base: str, kind: str, i: int, max_tokens: int, timeout: float) -> tuple[float, str | None, int]:
    """(latency s, error kind or None, reply tokens)."""
    path, body = request_body(kind, i, max_tokens)
    req = urllib.request.Request(base + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return time.perf_counter() - start, f"HTTP {exc.code}", 0
    except (OSError, ValueError) as exc:  # refused, reset, timeout, bad JSON
        return time.perf_counter() - start, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}", 0
    latency = time.perf_counter() - start
    if kind == "gguf":
        ok = isinstance(answer.get("choices"), list) and answer["choices"] and "message" in answer["choices"][0]
        tokens = (answer.get("usage") or {}).get("completion_tokens", 0)
    else:
        ok, tokens = isinstance(answer.get("predictions"), list) and len(answer["predictions"]) == 1, 0
    return latency, None if ok else "no reply in the JSON", tokens


def drive(base: str, kind: str, clients: int, requests: int, seconds: float | None, max_tokens: int,
          timeout: float) -> dict:
    """`clients` threads take request numbers from one counter until `requests` or `seconds` run out."""
    lock, counter = threading.Lock(), [0]
    results: list[tuple[float, str | None, int]] = []
    stop_at = time.monotonic() + seconds if seconds else None

    def client() -> None:
        while True:
            with lock:
                i = counter[0]
                if (stop_at is None and i >= requests) or (stop_at is not None and time.monotonic() >= stop_at):
                    return
                counter[0] += 1
            result = one_request(base, kind, i, max_tokens, timeout)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    errors = Counter(r[1] for r in results if r[1])
    tokens = sum(r[2] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 2), "reply_tokens_per_s": round(tokens / wall, 1),
            "p50_s": round(q[49], 3), "p90_s": round(q[89], 3), "p99_s": round(q[98], 3),
            "max_s": round(latencies[-1], 3) if latencies else None,
            "errors": sum(errors.values()), "errors_by_kind": dict(errors)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--gguf", type=Path, help="serve this GGUF file (llama.cpp's server)")
    src.add_argument("--alias", help="serve this registered version (MLflow's model server; needs --data-root)")
    src.add_argument("--tiny", action="store_true", help="make a tiny random GGUF model and serve it (the default)")
    ap.add_argument("--data-root", type=Path, help="crawl2model data root (default: a temporary folder)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="total requests (ignored with --seconds)")
    ap.add_argument("--seconds", type=float, help="send requests for this long instead of a fixed number")
    ap.add_argument("--max-tokens", type=int, default=16, help="reply tokens asked for per request")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout in seconds")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1 or (args.seconds is not None and args.seconds <= 0):
        ap.error("--clients, --requests and --seconds must be positive")
    if args.alias and not args.data_root:
        ap.error("--alias needs --data-root (the data root whose registry holds the model)")
    if args.gguf and not args.gguf.is_file():
        ap.error(f"--gguf {args.gguf}: no such file")

    with tempfile.TemporaryDirectory(prefix="c2m-serve-load-") as tmp:
        work = Path(tmp)
        root = args.data_root or work / "root"
        kind = "alias" if args.alias else "gguf"
        if args.alias:
            source = ["serve", "--alias", args.alias]
            what = f"models:/...@{args.alias}"
        else:
            gguf = args.gguf
            if gguf is None:
                print("making a tiny random model (--tiny) ...", flush=True)
                gguf = make_tiny_gguf(work / "tiny")
            source, what = ["serve", "--gguf", str(gguf.resolve())], str(gguf)
        port = free_port()
        print(f"starting crawl2model serve ({what}) on 127.0.0.1:{port} ...", flush=True)
        started = time.monotonic()
        server = Server(["--data-root", str(root), *source], port, work / "serve.log")
        try:
            base = f"http://127.0.0.1:{port}"
            print(f"serving after {time.monotonic() - started:.1f}s; warm-up request ...", flush=True)
            warm = one_request(base, kind, 0, args.max_tokens, args.timeout)
            if warm[1]:
                OUT.mkdir(parents=True, exist_ok=True)
                (OUT / "serve_load.log").write_text(server.log.read_text(errors="replace"))
                raise SystemExit(f"the warm-up request failed: {warm[1]}; the server's output: bench/out/serve_load.log")
            budget = f"{args.seconds:.0f}s" if args.seconds else f"{args.requests} requests"
            print(f"{args.clients} clients, {budget}, {args.max_tokens} reply tokens each ...", flush=True)
            result = drive(base, kind, args.clients, args.requests, args.seconds, args.max_tokens, args.timeout)
        finally:
            code = server.stop()
        with socket.socket() as probe:
            closed = probe.connect_ex(("127.0.0.1", port)) != 0
    result.update({"source": what, "endpoint": request_body(kind, 0, 1)[0], "max_tokens": args.max_tokens,
                   "server_exit": code, "port_closed_after": closed, "loadavg": os.getloadavg()[0],
                   "cpus": os.cpu_count()})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['requests']} requests in {result['wall_s']}s with {result['clients']} clients: "
          f"{result['requests_per_s']} requests/s, {result['reply_tokens_per_s']} reply tokens/s")
    print(f"latency p50 {result['p50_s']}s  p90 {result['p90_s']}s  p99 {result['p99_s']}s  max {result['max_s']}s")
    print(f"errors: {result['errors']} {result['errors_by_kind'] or ''}")
    print(f"server stopped (CLI exit {code}), port {'closed' if closed else 'STILL OPEN'}; "
          f"load average {result['loadavg']:.1f} on {result['cpus']} CPUs; bench/out/serve_load.json")
    sys.exit(1 if result["errors"] or not closed else 0)


if __name__ == "__main__":
    main()
