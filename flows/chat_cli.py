"""`crawl2model chat` and `crawl2model serve`: talk to a tuned model in the terminal, or serve it over HTTP.

    crawl2model chat                     # the newest checkpoint of the data root's last stage (rl, dpo, sft, pretrain)
    crawl2model chat --checkpoint DIR | --alias champion | --gguf model-q8_0.gguf
    crawl2model chat --system "Answer in one sentence." --temperature 0.7 --top-p 0.9 --max-new-tokens 128 --seed 0
        inside: /reset (new conversation), /context (the conversation as the model sees it), /help, /exit or Ctrl-D;
        Ctrl-C stops a reply, or ends the chat at the prompt
    crawl2model serve [--alias champion] [--port 8080]     # MLflow's model server: POST /invocations
    crawl2model serve --gguf FILE [--port 8080]            # llama.cpp's OpenAI-compatible server: /v1/chat/completions
    crawl2model chat --alias champion registry.model_name=other      # key=value items override the config

chat: --alias downloads the registered pyfunc (`models:/<registry.model_name>@ALIAS`) and chats with
the checkpoint packaged in it, in torch; --gguf runs the file in llama.cpp with its own chat template
(model/chat.py has the details). serve runs an existing server in its own process group, bound to
127.0.0.1, prints the URL and an example request, and on Ctrl-C (or SIGTERM) forwards the interrupt
to the server and waits for it to stop (then SIGTERM, then SIGKILL). The registry is the data root's
MLflow store, or the server in MLFLOW_TRACKING_URI; the server process inherits that setting.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape  # paths, JSON and pip extras hold brackets that rich would read as markup

from crawl2model.layout import DataRoot
from flows.cli_app import MODEL, app, cli_config, err, fail, out
from flows.servers import _stop, interruptible, port_free, port_open

HELP = "/reset  new conversation (history cleared)\n/context  the conversation as the model sees it, and how much of " \
       "its context it fills\n/help  this list\n/exit  end (or Ctrl-D)"
# What `python -m llama_cpp.server` imports beyond llama_cpp: the `server` extra of llama-cpp-python.
LLAMA_SERVER_MODULES = ("uvicorn", "fastapi", "pydantic_settings", "sse_starlette", "starlette_context", "yaml")
LLAMA_SERVER_HINT = "pip install 'llama-cpp-python[server]'"
START_TIMEOUT_S = 180.0
INTERRUPT_GRACE_S = 10.0


def _registry(ctx: typer.Context, overrides: list[str], alias: str):
    """(registered model name, the version behind the alias) or a clear error."""
    cfg = cli_config(ctx, overrides)
    from mlflow import MlflowClient  # deferred: after cli_config prepared MLflow's environment
    from mlflow.exceptions import MlflowException

    name = cfg.registry.model_name
    try:
        return name, MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        fail(f"model {name!r} has no version with alias {alias!r} in {os.environ['MLFLOW_TRACKING_URI']}: "
             "`crawl2model run` registers one (`crawl2model models list` shows what there is)")


def _default_checkpoint(root: Path) -> Path:
    """The newest checkpoint of the last tuning stage there is: RL, else DPO, else SFT, else pretraining."""
    try:
        return DataRoot(root).newest_tuned(("rl", "dpo", "sft", "pretrain"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint under {root / 'checkpoints'}: run `crawl2model run` (or train, sft), "
                                "or give --checkpoint, --alias or --gguf") from None


def _backend(ctx: typer.Context, overrides: list[str], checkpoint: Path | None, alias: str | None,
             gguf: Path | None):
    """(backend, what it is) for the one source given, or the newest tuned checkpoint."""
    from model.chat import LlamaCppBackend, TorchBackend  # deferred: torch, not needed for --help
    from model.sampling import CheckpointError

    if sum(x is not None for x in (checkpoint, alias, gguf)) > 1:
        fail("give one of --checkpoint, --alias and --gguf")
    if gguf is not None:
        from model import llamacpp  # deferred: with the torch backends above

        if not llamacpp.available():
            fail(f"--gguf runs the file in llama.cpp, which needs llama-cpp-python: {escape(llamacpp.EXTRA_HINT)}")
        if not gguf.is_file():
            fail(f"--gguf {gguf}: no such file")
        try:
            return LlamaCppBackend(gguf), f"{gguf} in llama.cpp"
        except ValueError as exc:
            fail(str(exc))
    if alias is not None:
        import mlflow  # deferred: after cli_config (in _registry) prepared its environment

        name, version = _registry(ctx, overrides, alias)
        with tempfile.TemporaryDirectory() as tmp:  # the model is in memory once loaded
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version.version}", dst_path=tmp))
            return TorchBackend.from_checkpoint(local / "artifacts" / "checkpoint"), \
                f"models:/{name}@{alias} (version {version.version})"
    cfg = cli_config(ctx, overrides)
    try:
        checkpoint = checkpoint or _default_checkpoint(cfg.data_root)
        return TorchBackend.from_checkpoint(checkpoint), str(checkpoint)
    except (CheckpointError, FileNotFoundError) as exc:
        fail(str(exc))


OVERRIDES = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides (e.g. registry.model_name=NAME).")


@app.command(rich_help_panel=MODEL)
def chat(
    ctx: typer.Context,
    overrides: Optional[list[str]] = OVERRIDES,
    checkpoint: Optional[Path] = typer.Option(None, help="A checkpoint folder (default: the newest RL, else DPO, else "
                                                         "SFT, else pretraining checkpoint of the data root)."),
    alias: Optional[str] = typer.Option(None, help="A registered version by alias, e.g. champion (MLflow registry)."),
    gguf: Optional[Path] = typer.Option(None, help="A GGUF export, run in llama.cpp (llama-cpp-python)."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    temperature: float = typer.Option(0.7, help="0 = greedy."),
    top_p: float = typer.Option(0.9, help="Nucleus sampling: the most likely tokens up to this probability."),
    max_new_tokens: int = typer.Option(128, help="Longest reply in tokens (at most half the model's context)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed (reply k of a conversation uses seed + k)."),
) -> None:
    """Chat with a model in the terminal: chat template, streamed replies, multi-turn history, /reset."""
    from model.chat import Chat  # deferred: torch, not needed for --help

    backend, what = _backend(ctx, overrides or [], checkpoint, alias, gguf)
    try:
        session = Chat(backend, system, max_new_tokens, temperature, top_p, seed,
                       notify=lambda message: out.print(f"[dim]{escape(message)}[/]", highlight=False, soft_wrap=True))
    except ValueError as exc:
        fail(str(exc))
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    out.print(f"chatting with {escape(what)} ({backend.context}-token context); /help lists the commands",
              highlight=False, soft_wrap=True)
    _loop(session)


def _loop(session) -> None:
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt
            print()
            return
        command = line.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            out.print("[dim](history cleared: a new conversation)[/]")
        elif command == "/help":
            out.print(HELP, highlight=False)
        elif command == "/context":
            ids = session.context_ids()
            turns = len(session.history) // 2
            plural = "" if turns == 1 else "s"
            out.print(f"context: {len(ids)} of {session.backend.context} tokens, {turns} turn{plural}", highlight=False)
            print(session.backend.show(ids))
        elif command.startswith("/"):
            out.print(f"unknown command {escape(command)}; /help lists them", highlight=False)
        else:
            _answer(session, line)


def _answer(session, line: str) -> None:
    """Print the reply as it streams; Ctrl-C stops it (what came so far stays in the history)."""
    pieces = session.send(line)
    if pieces is None:  # too long for the context: the notice said so
        return
    sys.stdout.write("bot> ")
    sys.stdout.flush()
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write(" [stopped]")
    finally:
        pieces.close()
    sys.stdout.write("\n")
    sys.stdout.flush()


@app.command(rich_help_panel=MODEL)
def serve(
    ctx: typer.Context,
    overrides: Optional[list[str]] = OVERRIDES,
    gguf: Optional[Path] = typer.Option(None, help="A GGUF file: llama.cpp's OpenAI-compatible server."),
    alias: Optional[str] = typer.Option(None, help="A registered version by alias (default: champion): "
                                                   "MLflow's model server."),
    port: int = typer.Option(8080, help="Port on 127.0.0.1."),
) -> None:
    """Serve a model over HTTP on 127.0.0.1 with an existing server; Ctrl-C stops it."""
    if gguf is not None and alias is not None:
        fail("give one of --gguf and --alias")
    if not port_free(port):
        fail(f"port {port} on 127.0.0.1 is in use; choose another with --port")
    url = f"http://127.0.0.1:{port}"
    if gguf is not None:
        cli_config(ctx, overrides or [])
        missing = [m for m in ("llama_cpp", *LLAMA_SERVER_MODULES) if importlib.util.find_spec(m) is None]
        if missing:
            fail(f"serving a GGUF needs llama.cpp's server (missing: {', '.join(missing)}): "
                 f"{escape(LLAMA_SERVER_HINT)}")
        if not gguf.is_file():
            fail(f"--gguf {gguf}: no such file")
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                   "--port", str(port)]
        example = (f"curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
                   "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"What is this website about?\"}]}'")
        what = f"{gguf} (llama.cpp, OpenAI-compatible: /v1/chat/completions, /v1/completions, /v1/models)"
    else:
        alias = alias or "champion"
        name, version = _registry(ctx, overrides or [], alias)
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@{alias}",
                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
        example = (f"curl {url}/invocations -H 'Content-Type: application/json' -d '{{\"inputs\": "
                   "[\"What is this website about?\"], \"params\": {\"max_new_tokens\": 64, \"temperature\": 0.0}}'")
        what = f"models:/{name}@{alias} (version {version.version}, MLflow's model server: /invocations)"
    run_server(command, port, url, what, example)


def run_server(command: list[str], port: int, url: str, what: str, example: str) -> None:
    """Start the server in its own process group, say where it answers once it does, wait; Ctrl-C
    or SIGTERM interrupts it (SIGINT to its group) and waits for it to stop."""
    with interruptible():
        _run_server(command, port, url, what, example)


def _run_server(command: list[str], port: int, url: str, what: str, example: str) -> None:
    out.print(f"starting {escape(what)} ...", highlight=False)
    # MLflow starts `uvicorn` by name: the venv's bin must be on PATH even when the venv is not activated
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, start_new_session=True)  # output: this terminal
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not port_open(port):
            if proc.poll() is not None:
                fail(f"the server exited with status {proc.returncode} before answering on port {port} "
                     "(its output is above)", code=1)
            if time.monotonic() > deadline:
                fail(f"the server did not answer on port {port} within {START_TIMEOUT_S:.0f}s", code=1)
            time.sleep(0.3)
        out.print(f"[bold green]serving[/] {escape(what)} at {url}\n  {escape(example)}\nCtrl-C stops it.",
                  highlight=False, soft_wrap=True)
        code = proc.wait()
        if code:
            fail(f"the server exited with status {code}", code=1)
    except KeyboardInterrupt:
        try:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C would send it in the foreground
            proc.wait(timeout=INTERRUPT_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            err.print(f"the server did not stop within {INTERRUPT_GRACE_S:.0f}s of the interrupt: terminating it")
        out.print("server stopped", highlight=False)
    finally:
        _stop(proc)  # the rest of its process group (workers), if anything is left
