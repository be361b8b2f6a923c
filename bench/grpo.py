"""GRPO benchmark: steps/s and sampled tokens/s of crawl2model's GRPO (model/grpo.py: KV-cache
sampling with model.generate on model/llama.py) against TRL's GRPOTrainer on the same model
exported to Hugging Face format, with the same prompts, group size, lengths, optimizer, threads and
dtype; one run per side; then held-out accuracy of both trained models after the same steps.

    .venv/bin/python bench/grpo.py                          # 4 prompts x group 8, 32 new tokens, 1 + 5 steps
    .venv/bin/python bench/grpo.py --checkpoint c2m-data/checkpoints/sft/step-000060   # an SFT model
    bash bench/setup_trl.sh                                 # the TRL venv alone (grpo.py runs it too)

Model: with no --checkpoint, a tasks.bpe tokenizer (vocab 2048) trained on the worked solutions
of model.verifiable's train problems and a randomly initialised ModelConfig.from_preset("small")
Llama saved as a step-0 checkpoint; model.hf.export_hf writes the Hugging Face folder TRL loads.
A random model almost never earns a reward, so advantages and losses are ~0: the speed figures
still hold (sampling and the update cost the same), the accuracies are 0 on both sides.

Same setting on both sides:
  problems   model.verifiable.problems(families, (warmup + steps) x P, seed, "train"); step i takes
             problems [i*P, (i+1)*P) (TRL: shuffle_dataset=False); held-out: problems(..., "heldout")
  prompts    crawl2model chat_prompt_ids; TRL the exported chat template (apply_chat_template);
             the prompt ids of each step are compared (printed)
  sampling   group G replies per prompt, max_new_tokens, temperature 1, no top-k/top-p, stop at
             <|end_of_turn|> (included in the reply); both sample with a KV cache (crawl2model
             model.generate, TRL transformers generate with its DynamicCache)
  reward     model.verifiable.reward (1 right + 0.1 well-formed), on TRL's side too
  loss       advantages (r - group mean) / (group std + 1e-4); per-token clipped surrogate (eps 0.2),
             mean over each reply's tokens then over replies (TRL loss_type="grpo"); no KL (beta 0,
             no reference model); one update per batch (num_iterations 1)
  optimizer  AdamW lr constant, betas 0.9/0.99, no weight decay, grad-norm clip 1.0, no accumulation
             (crawl2model: model.train.make_optimizer; TRL optim="adamw_torch")
  numerics   fp32, no gradient checkpointing, torch.set_num_threads(threads) in both processes, CPU

Measured: warm-up steps (default 1), then timed steps (default 5). A step is sampling + rewards +
advantages + forward/backward + clip + AdamW (crawl2model: the body of model.grpo.run_rl's loop,
generate + model.grpo._update; TRL: between on_step_begin and on_step_end, which brackets its
_prepare_inputs (generation and scoring) and training_step). The sides alternate step by step
(crawl2model step i, then TRL step i; the TRL process waits on a pipe), as in bench/dpo.py, so load
on a shared machine hits both alike. steps/s = timed steps / their seconds; sampled tokens/s =
reply tokens (eos included) of those steps / the same seconds; generation seconds are also
reported apart (crawl2model: model.generate; TRL: _generate_single_turn). The two sides draw
different random tokens (different RNGs), so per-step token counts differ unless every reply runs
to max_new_tokens; tokens/s uses each side's own count. Held-out accuracy (greedy, max_new_tokens,
`--heldout` problems) is measured after training, not alternated, not in the step times.
Results: a table on stdout, bench/out/grpo.json; work files in bench/out/grpo/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
WORK = OUT / "grpo"
PEER_SCRIPT = REPO / "bench" / "grpo_trl_peer.py"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dpo import TRL_VENV, _peer_env, ensure_trl_venv, load_llama, speed  # noqa: E402

from model.chat_data import chat_prompt_ids  # noqa: E402
from model.checkpoint import save_checkpoint  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.generate import generate  # noqa: E402
from model.grpo import RlConfig, _update, group_advantages, rollout_seed  # noqa: E402
from model.hf import export_hf, tokenizer_folder  # noqa: E402
from model.llama import Llama  # noqa: E402
from model.tokenizer import END_OF_TURN, load_tokenizer, save_tokenizer  # noqa: E402
from model.train import make_optimizer  # noqa: E402
from model.verifiable import accuracy, problems, reward, warmup_rows  # noqa: E402
from tasks.bpe import train_tokenizer  # noqa: E402


def build_checkpoint(families: list[str], preset: str, vocab: int, seed: int) -> Path:
    """A tasks.bpe tokenizer trained on the families' worked solutions and a random step-0 model."""
    texts = [m["content"] for row in warmup_rows(families, 2000, seed) for m in row["messages"]]
    tokenizer = train_tokenizer((texts[i:i + 1000] for i in range(0, len(texts), 1000)), vocab_size=vocab)
    tokenizer_dir = save_tokenizer(tokenizer, WORK / "tokenizer")
    config = ModelConfig.from_preset(preset, vocab_size=tokenizer.get_vocab_size())
    torch.manual_seed(seed)
    return save_checkpoint(WORK / "checkpoint", Llama(config), None,
                           {"step": 0, "config": config.to_dict(), "tokenizer": str(tokenizer_dir)})


class Crawl2modelGRPO:
    """model.grpo.run_rl's step, one call at a time: generate a group per prompt with the KV cache,
    model.verifiable.reward, group_advantages, _update (grpo_loss, clip, AdamW)."""

    def __init__(self, checkpoint: Path, train: list, a):
        self.a, self.train = a, train
        self.cfg = RlConfig(base=str(checkpoint), out=str(WORK / "rl-unused"), prompts_per_step=a.prompts,
                            group_size=a.group, max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                            lr=a.lr, weight_decay=0.0, beta1=0.9, beta2=0.99, grad_clip=1.0, clip_eps=0.2,
                            kl_beta=0.0, iterations=1, micro_batch=a.prompts * a.group, format_reward=0.1,
                            seed=a.seed, sample_prompts=[], device="cpu")
        self.model = load_llama(checkpoint).train()
        self.tokenizer = load_tokenizer(tokenizer_folder(checkpoint))
        self.eos = self.tokenizer.token_to_id(END_OF_TURN)
        self.optimizer = make_optimizer(self.model, self.cfg, fused=False)
        self.steps: list[dict] = []
        self.prompt_ids: list[list[list[int]]] = []

    def step(self) -> dict:
        cfg, k, group = self.cfg, len(self.steps), self.a.group
        batch = self.train[k * cfg.prompts_per_step:(k + 1) * cfg.prompts_per_step]
        started = time.perf_counter()
        prompt_ids = [chat_prompt_ids(self.tokenizer, p.prompt) for p in batch for _ in range(group)]
        replies = generate(self.model, prompt_ids, cfg.max_new_tokens, temperature=cfg.temperature, eos_id=self.eos,
                           seed=rollout_seed(cfg.seed, k))
        generated = time.perf_counter()
        texts = [self.tokenizer.decode(r) for r in replies]
        rewards = torch.tensor([reward(t, p, cfg.format_reward) for t, p in zip(texts, [p for p in batch
                                                                                          for _ in range(group)])])
        advantages = group_advantages(rewards.view(-1, group)).flatten()
        metrics = _update(self.model, None, self.optimizer, cfg, prompt_ids, replies, advantages, torch.device("cpu"))
        seconds = time.perf_counter() - started
        self.prompt_ids.append(prompt_ids[::group])
        self.steps.append({"step": k + 1, "seconds": seconds, "generation_seconds": generated - started,
                           "tokens": sum(len(r) for r in replies), "reward_mean": float(rewards.mean()),
                           "loss": metrics["rl/loss"], "grad_norm": metrics["rl/grad_norm"]})
        return self.steps[-1]


def run_both(checkpoint: Path, hf: Path, train: list, held: list, a) -> tuple[Crawl2modelGRPO, dict | None]:
    """Both sides, steps alternating (crawl2model step i, then TRL step i), as bench/dpo.py does."""
    if a.skip_trl:
        ours = Crawl2modelGRPO(checkpoint, train, a)
        for _ in range(a.warmup + a.steps):
            ours.step()
        return ours, None
    python = ensure_trl_venv()
    out = WORK / "trl"
    out.mkdir(parents=True, exist_ok=True)
    problems_file = WORK / "problems.json"
    problems_file.write_text(json.dumps({"train": [asdict(p) for p in train], "heldout": [asdict(p) for p in held]}))
    tokenizer = load_tokenizer(tokenizer_folder(checkpoint))
    cmd = [str(python), str(PEER_SCRIPT), "--hf", str(hf), "--problems", str(problems_file), "--out", str(out),
           "--eos-id", str(tokenizer.token_to_id(END_OF_TURN)), "--prompts", str(a.prompts), "--group", str(a.group),
           "--max-new-tokens", str(a.max_new_tokens), "--temperature", str(a.temperature), "--lr", str(a.lr),
           "--warmup", str(a.warmup), "--steps", str(a.steps), "--threads", str(a.threads), "--seed", str(a.seed),
           "--lockstep"]
    log_path = out / "trl.stderr.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                env=_peer_env(), cwd=REPO)

        def expect(word: str) -> str:
            line = proc.stdout.readline()
            if line.startswith(word):
                return line
            proc.kill()
            proc.wait()
            raise RuntimeError(f"TRL peer: expected {word!r}, got {line[:200]!r} (exit {proc.returncode}, "
                               f"log {log_path}):\n{log_path.read_text(errors='replace')[-4000:]}")

        try:
            expect("ready")
            ours = Crawl2modelGRPO(checkpoint, train, a)
            for i in range(a.warmup + a.steps):
                step = ours.step()
                print(f"  step {i + 1:2d}  crawl2model {step['seconds']:6.2f} s ({step['tokens']} tokens, "
                      f"reward {step['reward_mean']:.3f})", end="", flush=True)
                if i:
                    expect("ready")
                proc.stdin.write("go\n")
                proc.stdin.flush()
                done = expect("done").split()
                print(f"  | TRL {float(done[2]):6.2f} s", flush=True)
            proc.stdin.close()
            rest = proc.stdout.read()  # the peer's held-out accuracy runs now, alone
            proc.wait()
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"TRL peer failed with exit code {proc.returncode} (log: {log_path}):\n"
                           f"{log_path.read_text(errors='replace')[-4000:]}")
    lines = [line for line in rest.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"TRL peer printed no JSON (log: {log_path}); stdout ended with {rest[-500:]!r}")
    return ours, json.loads(lines[-1])


def gen_speed(result_steps: list[dict], warmup: int) -> float:
    timed = result_steps[warmup:]
    return sum(s["tokens"] for s in timed) / sum(s["generation_seconds"] for s in timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="an existing crawl2model checkpoint (default: a fresh random one)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=2048, help="tokenizer vocab when no --checkpoint is given")
    ap.add_argument("--families", default="arithmetic,word_problems")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--group", type=int, default=8, help="replies per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--heldout", type=int, default=32, help="held-out problems for the accuracy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    families = a.families.split(",")

    started = time.perf_counter()
    checkpoint = a.checkpoint.resolve() if a.checkpoint else build_checkpoint(families, a.preset, a.vocab, a.seed)
    config = ModelConfig.from_dict(json.loads((checkpoint / "meta.json").read_text())["config"])
    train = problems(families, (a.warmup + a.steps) * a.prompts, a.seed, "train")
    held = problems(families, a.heldout, a.seed, "heldout")
    hf = export_hf(checkpoint, WORK / "hf")
    print(f"GRPO on CPU ({a.threads} threads), fp32: model {checkpoint} ({config.num_params():,} parameters, dim "
          f"{config.dim}, {config.n_layers} layers, vocab {config.vocab_size}); {a.prompts} prompts x group {a.group}, "
          f"{a.max_new_tokens} new tokens, temperature {a.temperature}, lr {a.lr}, beta 0; families {families}; "
          f"{a.warmup} warm-up + {a.steps} timed steps (prepared in {time.perf_counter() - started:.1f} s)", flush=True)

    ours, trl = run_both(checkpoint, hf, train, held, a)
    t0 = time.perf_counter()
    ours_acc = accuracy(ours.model.eval(), ours.tokenizer, held, a.max_new_tokens)
    ours_heldout = {"accuracy": ours_acc, "problems": len(held), "seconds": time.perf_counter() - t0}
    ours_speed = speed({"steps": ours.steps}, a.warmup)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "checkpoint": str(checkpoint), "hf": str(hf), "params": config.num_params(),
              "crawl2model": {"steps": ours.steps, **ours_speed, "generation_tokens_per_s": gen_speed(ours.steps, a.warmup),
                              "heldout": ours_heldout}}
    sides = [("crawl2model", report["crawl2model"])]
    if trl:
        trl_speed = speed(trl, a.warmup)
        report["trl"] = {**trl, **trl_speed, "generation_tokens_per_s": gen_speed(trl["steps"], a.warmup)}
        sides.append((f"TRL {trl['versions']['trl']}", report["trl"]))
    print(f"\n{'side':12s} {'steps/s':>8s} {'sampled tok/s':>14s} {'gen-only tok/s':>15s} {'median step s':>14s} "
          f"{'tokens timed':>13s} {'held-out acc':>13s}")
    for name, r in sides:
        print(f"{name:12s} {r['steps_per_s']:8.3f} {r['tokens_per_s']:14.1f} {r['generation_tokens_per_s']:15.1f} "
              f"{r['median_step_seconds']:14.2f} {r['tokens_timed']:13d} {r['heldout']['accuracy']:13.3f}")
    if trl:
        o, t = report["crawl2model"], report["trl"]
        ratios = {"steps_per_s": o["steps_per_s"] / t["steps_per_s"], "tokens_per_s": o["tokens_per_s"] / t["tokens_per_s"],
                  "generation_tokens_per_s": o["generation_tokens_per_s"] / t["generation_tokens_per_s"],
                  "median_step": t["median_step_seconds"] / o["median_step_seconds"]}
        report["ratios"] = ratios
        same_prompts = ours.prompt_ids == trl["prompt_ids"]
        report["prompt_ids_identical"] = same_prompts
        print(f"\ncrawl2model / TRL: {ratios['steps_per_s']:.2f}x steps/s, {ratios['tokens_per_s']:.2f}x sampled tokens/s "
              f"(goal >= 1.5x); generation alone {ratios['generation_tokens_per_s']:.2f}x; from median step times "
              f"{ratios['median_step']:.2f}x")
        print(f"prompt token ids identical on every step: {same_prompts}; generation share of step time: crawl2model "
              f"{sum(s['generation_seconds'] for s in o['steps'][a.warmup:]) / o['timed_seconds']:.0%}, TRL "
              f"{sum(s['generation_seconds'] for s in t['steps'][a.warmup:]) / t['timed_seconds']:.0%}")
        print(f"held-out accuracy after {a.warmup + a.steps} steps ({len(held)} problems, greedy): crawl2model "
              f"{o['heldout']['accuracy']:.3f}, TRL {t['heldout']['accuracy']:.3f}")
        print(f"TRL generation config: {trl['settings']['generation_config']}; attn {trl['settings']['attn_implementation']}")
        print(f"TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}, torch "
              f"{trl['versions']['torch']} (peer venv {TRL_VENV.relative_to(REPO)}); crawl2model torch {torch.__version__}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "grpo.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
