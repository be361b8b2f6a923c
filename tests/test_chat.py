"""Talking to a model (model/chat.py, flows/chat_cli.py): token streaming that matches batched
generation, a whole conversation's prompt ids in the training format, multi-byte characters
streamed whole, history that keeps earlier turns and drops the oldest ones to fit the context,
`crawl2model chat` in a real pseudo-terminal (a streamed reply, /context, /reset, Ctrl-D), the
same model through llama.cpp, and a registered model chatted with by alias and served by MLflow's
model server (one /invocations request, then Ctrl-C stops it). The tiny SFT model of
tests/test_posttrain.py answers its questions with a fixed sentence."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from flows.chat_cli import LLAMA_SERVER_HINT, LLAMA_SERVER_MODULES, _default_checkpoint
from model import llamacpp
from model.chat import Chat, TorchBackend, decode_stream
from model.chat_data import chat_prompt_ids, conversation_prompt_ids
from model.checkpoint import latest_checkpoint
from model.config import ModelConfig
from model.generate import generate, stream
from model.llama import Llama
from model.posttrain import reply
from model.sampling import load_model
from model.tokenizer import END_OF_TURN, USER, render_chat
from tests.test_posttrain import ANSWER, sft, world  # noqa: F401  (fixtures: the tiny world and its SFT run)

REPO = Path(__file__).resolve().parents[1]
QUESTION = "Tell me something about cats and maps?"
SYSTEM = "Be brief."
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][A-Za-z0-9]|[=>])")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tuned(world, sft) -> dict:
    checkpoint = latest_checkpoint(sft["out"])
    model, _ = load_model(checkpoint)
    return {"checkpoint": checkpoint, "model": model, "tokenizer": world["tokenizer"]}


def cli_env() -> dict:
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    for key in ("MLFLOW_TRACKING_URI", "C2M_HOME", "PREFECT_API_URL", "PREFECT_HOME"):
        env.pop(key, None)  # the CLI derives them from --data-root
    return env


def test_stream_yields_the_tokens_of_generate_one_at_a_time():
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=97, n_layers=1, max_seq_len=48))
    prompt = [5, 9, 2, 40]
    for settings in ({"temperature": 0}, {"temperature": 1.3, "seed": 7},
                     {"temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 3}):
        assert list(stream(model, prompt, 20, **settings)) == generate(model, [prompt], 20, **settings)[0]
    greedy = generate(model, [prompt], 20, temperature=0)[0]
    eos = greedy[3]
    assert list(stream(model, prompt, 20, temperature=0, eos_id=eos)) == greedy[:greedy.index(eos) + 1]

    model.train()
    tokens = stream(model, prompt, 20, temperature=0)
    assert next(tokens) == greedy[0]
    assert not model.training and not torch.is_inference_mode_enabled()  # between tokens: the caller's mode
    tokens.close()
    assert model.training  # the mode is restored when the caller stops early
    with pytest.raises(ValueError, match="max_seq_len"):
        stream(model, prompt, 45)  # checked at the call, not at the first token


def test_conversation_prompt_ids_are_the_rendered_template(world):
    tokenizer = world["tokenizer"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi <|user|> there?"},
                {"role": "assistant", "content": ANSWER}, {"role": "user", "content": QUESTION}]
    ids = conversation_prompt_ids(tokenizer, messages)
    assert tokenizer.decode(ids, skip_special_tokens=False) == render_chat(messages, add_generation_prompt=True)
    assert ids.count(tokenizer.token_to_id(USER)) == 2  # "<|user|>" inside a message is plain text
    assert conversation_prompt_ids(tokenizer, messages, add_generation_prompt=False) == ids[:-1]
    assert chat_prompt_ids(tokenizer, QUESTION) == conversation_prompt_ids(tokenizer, messages[-1:])


def test_decode_stream_holds_back_characters_split_over_tokens(world):
    tokenizer = world["tokenizer"]
    text = "naïve café 🙂 東京 done"
    ids = tokenizer.encode(text).ids
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # the tokenizer does split some characters
    pieces = list(decode_stream(tokenizer, ids))
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert len(pieces) > 5 and not any("\ufffd" in p for p in pieces)


def test_chat_keeps_the_history_and_drops_the_oldest_turns_to_fit(tuned):
    model, tokenizer = tuned["model"], tuned["tokenizer"]
    notices: list[str] = []
    chat = Chat(TorchBackend(model, tokenizer), system=SYSTEM, max_new_tokens=16, temperature=0, notify=notices.append)
    system = {"role": "system", "content": SYSTEM}
    first = "".join(chat.send(QUESTION))
    alone = conversation_prompt_ids(tokenizer, [system, {"role": "user", "content": QUESTION}])
    [expected] = generate(model, [alone], 16, temperature=0, eos_id=tokenizer.token_to_id(END_OF_TURN))
    assert first == tokenizer.decode(expected) and first.strip()
    assert chat.last_prompt_ids == alone

    second = "Tell me something about bees?"
    list(chat.send(second))  # the first turn is still in the prompt
    assert chat.last_prompt_ids == conversation_prompt_ids(tokenizer, [system, {"role": "user", "content": QUESTION},
                                                                       {"role": "assistant", "content": first},
                                                                       {"role": "user", "content": second}])
    budget = model.config.max_seq_len - 16
    for subject in ("rain", "salt", "wool", "tea"):
        list(chat.send(f"Tell me something about {subject}?"))
        assert len(chat.last_prompt_ids) <= budget
    assert chat.dropped >= 2 and len(notices) == 1 and "dropping the oldest turns" in notices[0]  # said once
    assert QUESTION not in tokenizer.decode(chat.last_prompt_ids)
    assert tokenizer.decode(chat.last_prompt_ids, skip_special_tokens=False).startswith(f"<|system|>{SYSTEM}")

    history = list(chat.history)
    assert chat.send("cats " * 60) is None and chat.history == history  # too long even alone: refused
    assert "fewer words" in notices[-1]
    chat.reset()
    assert chat.history == [] and chat.context_ids() == conversation_prompt_ids(tokenizer, [system])


def test_sampled_conversation_replays_after_reset(tuned):
    chat = Chat(TorchBackend(tuned["model"], tuned["tokenizer"]), temperature=1.5, top_p=0.95, seed=11)
    first = ["".join(chat.send(QUESTION)) for _ in range(2)]
    assert first[0] != first[1]  # turn k samples with seed + k (and a longer prompt)
    chat.reset()
    assert ["".join(chat.send(QUESTION)) for _ in range(2)] == first


class Terminal:
    """The CLI in a real pseudo-terminal: read until a marker, type lines."""

    def __init__(self, args: list[str], timeout: float = 120):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], stdin=slave, stdout=slave,
                                     stderr=slave, env=cli_env(), cwd=REPO, start_new_session=True)
        os.close(slave)
        self.master, self.timeout, self.pending = master, timeout, ""

    def read_until(self, marker: str) -> str:
        deadline = time.monotonic() + self.timeout
        while marker not in self.pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {marker!r} within {self.timeout}s; got {self.pending[-2000:]!r}")
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # the other side closed: the process ended
                    data = b""
                if not data:
                    raise AssertionError(f"the CLI ended before {marker!r}: {self.pending[-2000:]!r}")
                self.pending += ANSI.sub("", data.decode("utf-8", "replace")).replace("\r", "")
        text, self.pending = self.pending.split(marker, 1)
        return text

    def say(self, line: str) -> str:
        """Type a line at the prompt; what the CLI printed before its next prompt."""
        os.write(self.master, line.encode() + b"\n")
        return self.read_until("you> ")

    def close(self) -> int:
        os.write(self.master, b"\x04")  # Ctrl-D
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.master)
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


def bot_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith("bot> "))[len("bot> "):]


def context_of(printed: str) -> tuple[int, int, str]:
    """(tokens, turns, the rendered context) of what /context printed."""
    lines = printed.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("context: "))
    tokens, turns = re.match(r"context: (\d+) of \d+ tokens, (\d+) turns?", lines[at]).groups()
    return int(tokens), int(turns), "\n".join(lines[at + 1:])


@pytest.mark.slow
def test_chat_in_a_terminal_streams_replies_and_reset_clears_the_history(tuned, tmp_path):
    tokenizer = tuned["tokenizer"]
    expected = "".join(Chat(TorchBackend(tuned["model"], tokenizer), system=SYSTEM, temperature=0,
                            max_new_tokens=16).send(QUESTION))
    system = {"role": "system", "content": SYSTEM}
    term = Terminal(["--data-root", str(tmp_path / "root"), "chat", "--checkpoint", str(tuned["checkpoint"]),
                     "--system", SYSTEM, "--temperature", "0", "--max-new-tokens", "16"])
    try:
        banner = term.read_until("you> ")
        assert f"chatting with {tuned['checkpoint']}" in banner and "64-token context" in banner
        first = bot_line(term.say(QUESTION))
        assert first and first == expected.strip()  # what the model says to this conversation, streamed
        tokens, turns, shown = context_of(term.say("/context"))
        conversation = [system, {"role": "user", "content": QUESTION}, {"role": "assistant", "content": expected}]
        assert (tokens, turns) == (len(conversation_prompt_ids(tokenizer, conversation)), 1) and QUESTION in shown
        assert "history cleared" in term.say("/reset")
        tokens, turns, shown = context_of(term.say("/context"))
        assert (tokens, turns) == (len(conversation_prompt_ids(tokenizer, [system])), 0)
        assert QUESTION not in shown and shown.strip() == render_chat([system], add_generation_prompt=True)
        assert bot_line(term.say(QUESTION)) == first  # a fresh conversation again
        assert "/reset" in term.say("/help")
    finally:
        code = term.close()
    assert code == 0


def test_default_source_is_the_newest_tuned_checkpoint(tmp_path):
    def checkpoint(name: str, kind: str | None) -> Path:
        folder = tmp_path / "checkpoints" / name / "step-000001"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"step": 1, **({"kind": kind} if kind else {})}))
        return folder

    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _default_checkpoint(tmp_path)
    pretrain = checkpoint("pretrain-a", None)
    assert _default_checkpoint(tmp_path) == pretrain
    sft_folder = checkpoint("sft-a", "sft")
    dpo = checkpoint("dpo-a", "dpo")
    checkpoint("pretrain-b", None)  # newer, but not tuned
    assert _default_checkpoint(tmp_path) == dpo
    (dpo / "meta.json").unlink()  # unfinished: no meta.json
    assert _default_checkpoint(tmp_path) == sft_folder
    rl = checkpoint("rl-a", "rl")  # the stage after DPO
    assert _default_checkpoint(tmp_path) == rl


@pytest.fixture(scope="module")
def gguf(tuned, tmp_path_factory) -> Path:
    if not llamacpp.available():
        pytest.skip(f"llama-cpp-python is not installed ({llamacpp.EXTRA_HINT})")
    from model.hf import tokenizer_folder
    from model.to_gguf import export_gguf

    return export_gguf(tuned["checkpoint"], tmp_path_factory.mktemp("gguf") / "chat-f32.gguf", "f32",
                       tokenizer=tokenizer_folder(tuned["checkpoint"]) / "tokenizer.json")


@pytest.mark.llamacpp
def test_gguf_chat_renders_and_answers_like_torch(tuned, gguf):
    from model.chat import LlamaCppBackend

    torch_chat = Chat(TorchBackend(tuned["model"], tuned["tokenizer"]), system=SYSTEM, temperature=0, max_new_tokens=16)
    gguf_chat = Chat(LlamaCppBackend(gguf), system=SYSTEM, temperature=0, max_new_tokens=16)
    assert gguf_chat.backend.context == tuned["model"].config.max_seq_len
    for question in (QUESTION, "Tell me something about rain?"):
        pieces = list(gguf_chat.send(question))
        assert "".join(pieces) == "".join(torch_chat.send(question))
        assert gguf_chat.last_prompt_ids == torch_chat.last_prompt_ids  # the GGUF's template, the same ids
    assert sum(1 for p in pieces if p) > 1  # streamed piece by piece


def llama_server_missing() -> list[str]:
    import importlib.util

    return [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]


def test_serve_gguf_without_the_server_extra_names_the_install(tmp_path):
    if not llama_server_missing():
        pytest.skip("llama-cpp-python[server] is installed here; test_serve_gguf_answers_chat_completions runs instead")
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF")
    done = subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(tmp_path / "root"), "serve", "--gguf",
                           str(model_file)], env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and LLAMA_SERVER_HINT in done.stderr
    assert all(m in done.stderr for m in llama_server_missing())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def serve_until_answered(args: list[str], port: int, request) -> tuple[object, str]:
    """Run `crawl2model serve` with SIGINT ignored (as after `&` in a script), wait for its
    "serving" line, make the request, Ctrl-C the CLI; (the request's result, everything the CLI
    printed). The server must be gone afterwards."""
    from flows.servers import port_open

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"c2m-serve-{port}.log"
    with log.open("w+") as sink:
        # started with SIGINT ignored, as a script's `crawl2model serve &` is: the interrupt must still stop it
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args, "--port", str(port)], env=cli_env(),
                                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        try:
            # the CLI's own line, printed once the port answers (llama.cpp prints "reserving a graph" before it listens)
            ready = re.compile(rf"^serving .* at http://127\.0\.0\.1:{port}\b", re.MULTILINE)
            deadline = time.monotonic() + 240
            while not ready.search(log.read_text()) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.3)
            assert ready.search(log.read_text()), log.read_text()[-3000:]
            result = request(f"http://127.0.0.1:{port}")
            proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the CLI, not the server in its own session
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        printed = log.read_text()
    log.unlink()
    assert "server stopped" in printed and not port_open(port)  # the server went with it
    return result, printed


@pytest.mark.slow
@pytest.mark.llamacpp
def test_serve_gguf_answers_chat_completions(gguf, tmp_path):
    if llama_server_missing():
        pytest.skip(f"llama.cpp's server is not installed (missing {', '.join(llama_server_missing())}: "
                    f"{LLAMA_SERVER_HINT})")
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 32, "temperature": 0}
    answer, printed = serve_until_answered(["--data-root", str(tmp_path / "root"), "serve", "--gguf", str(gguf)],
                                           free_port(), lambda url: post(f"{url}/v1/chat/completions", body))
    assert answer["choices"][0]["message"]["content"] == ANSWER
    assert "/v1/chat/completions" in printed


@pytest.mark.slow
def test_registered_model_chats_by_alias_and_serves_invocations(tuned, data_root):
    """A version registered as model.serving's pyfunc (the register stage's log_model), alias
    champion: `chat --alias champion` answers like the checkpoint, and `serve` answers /invocations."""
    from mlflow import MlflowClient

    from crawl2model.config import load_config
    from flows.register import log_model
    from flows.tracking import Tracking

    cfg = load_config(overrides=["registry.model_name=c2m-chat"], data_root=data_root)  # the CLI gets the same override
    data_root.mkdir(parents=True)
    eval_set = data_root / "eval-set.json"
    eval_set.write_text("{}")
    run_id = Tracking(cfg.data_root, cfg.experiment).start_run("register")
    version = log_model.fn(cfg, run_id, tuned["checkpoint"], eval_set, None)
    MlflowClient().set_registered_model_alias("c2m-chat", "champion", version)
    root_args = ["--data-root", str(data_root)]

    chatted = subprocess.run([sys.executable, "-m", "flows.cli", *root_args, "chat", "--alias", "champion",
                              "--temperature", "0", "--max-new-tokens", "32", "registry.model_name=c2m-chat"],
                             input=f"{QUESTION}\n/exit\n", env=cli_env(), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert chatted.returncode == 0, chatted.stderr[-3000:]
    assert f"models:/c2m-chat@champion (version {version})" in chatted.stdout
    [answer] = re.findall(r"bot> (.*)", chatted.stdout)
    assert answer == reply(tuned["model"], tuned["tokenizer"], [QUESTION], 32)[0] == ANSWER

    served, printed = serve_until_answered(
        [*root_args, "serve", "--alias", "champion", "registry.model_name=c2m-chat"], free_port(),
        lambda url: post(f"{url}/invocations", {"inputs": [QUESTION], "params": {"max_new_tokens": 8}}))
    assert served["predictions"] == reply(tuned["model"], tuned["tokenizer"], [QUESTION], 8)
    assert "/invocations" in printed and f"version {version}" in printed
