"""The TRL peer of bench/grpo.py: GRPO steps with trl's GRPOTrainer on a Hugging Face export of the
crawl2model model, in the TRL venv (bench/setup_trl.sh), printing ONE JSON line on stdout.

    bench/.venvs/trl/bin/python bench/grpo_trl_peer.py --hf bench/out/grpo/hf \\
        --problems bench/out/grpo/problems.json --out bench/out/grpo/trl --eos-id N \\
        [--prompts 4 --group 8 --max-new-tokens 32 --temperature 1.0 --lr 1e-4 --warmup 1 --steps 5 \\
         --threads 2 --lockstep]

bench/grpo.py runs it with --lockstep: before each optimizer step the peer prints "ready N" on
stdout and waits for a line on stdin, after it prints "done N SECONDS", so the two sides' steps
alternate (as in bench/dpo_trl_peer.py). A GRPO step here is one generation batch (steps_per_generation
1, no accumulation): sampling, rewards, advantages, forward, backward, clip, AdamW, between the
callbacks' on_step_begin and on_step_end.

The reward function is crawl2model's own checker (model.verifiable.reward, format reward 0.1):
/work/main (this script's repo) is put on sys.path for model.verifiable only; the model, the
tokenizer and the prompts' token ids are the exported folder's (apply_chat_template).

Settings: GRPOConfig(per_device_train_batch_size = prompts x group, num_generations = group,
steps_per_generation 1, gradient_accumulation_steps 1, num_iterations 1, beta 0 (no reference),
loss_type "grpo" (per-reply token mean, then mean over replies: model.grpo.grpo_loss),
scale_rewards "group", epsilon 0.2, max_completion_length, temperature, top_p 1, top_k 0 (off),
eos = <|end_of_turn|> only (generation_kwargs; the export's generation_config would also stop at
<|endoftext|>), learning_rate constant, optim adamw_torch (betas 0.9/0.99, eps 1e-8, no weight
decay), max_grad_norm 1.0, fp32, no gradient checkpointing, use_cpu, shuffle_dataset False (step i
takes prompts [i*P, (i+1)*P), like crawl2model's side). max_steps = warmup + steps.

After training: greedy held-out accuracy (transformers generate, left padding, do_sample False,
max_new_tokens, eos <|end_of_turn|>) checked by model.verifiable.check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from peer import stdout_to_stderr  # bench/ is this script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", type=Path, required=True)
    ap.add_argument("--problems", type=Path, required=True, help='JSON {"train": [...], "heldout": [...]} Problem dicts')
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--eos-id", type=int, required=True, help="<|end_of_turn|>'s id")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--format-reward", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lockstep", action="store_true")
    return ap.parse_args(argv)


def run(a: argparse.Namespace, sync=None) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    sys.path.insert(0, str(REPO))
    from model.verifiable import Problem, check, reward  # crawl2model's checker, nothing else

    data = json.loads(a.problems.read_text())
    train = [Problem(**p) for p in data["train"]]
    held = [Problem(**p) for p in data["heldout"]]
    rows = [{"prompt": [{"role": "user", "content": p.prompt}], "answer": p.answer, "solution": p.solution,
             "family": p.family} for p in train]

    rewards_seen: list[list[float]] = []

    def verifiable_reward(prompts, completions, answer, solution, family, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        values = [reward(t, Problem(prompts[i][-1]["content"], answer[i], solution[i], family[i]), a.format_reward)
                  for i, t in enumerate(texts)]
        rewards_seen.append(values)
        return values

    class BenchGRPOTrainer(GRPOTrainer):
        """Times generation; records each step's sampled (completion) tokens, eos included."""

        def _generate_single_turn(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._generate_single_turn(*args, **kwargs)
            finally:
                self.bench_generation.append(time.perf_counter() - started)

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.bench_tokens.append(int(output["completion_mask"].sum()))
            self.bench_prompt_ids.append([ids[m.bool()].tolist() for ids, m in
                                          zip(output["prompt_ids"], output["prompt_mask"])])
            return output

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.started, self.seconds = None, []

        def on_step_begin(self, args, state, control, **kwargs):
            if sync is not None:
                sync.write(f"ready {state.global_step + 1}\n")
                sync.flush()
                if not sys.stdin.readline():
                    raise RuntimeError("the orchestrator closed stdin before the last step")
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)
            if sync is not None:
                sync.write(f"done {state.global_step} {self.seconds[-1]:.6f}\n")
                sync.flush()

    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(a.hf)
    model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)
    batch = a.prompts * a.group
    config = GRPOConfig(
        output_dir=str(out / "run"), per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=a.group, num_iterations=1, max_steps=a.warmup + a.steps,
        max_completion_length=a.max_new_tokens, temperature=a.temperature, top_p=1.0, top_k=0,
        generation_kwargs={"eos_token_id": a.eos_id}, beta=0.0, loss_type="grpo", scale_rewards="group",
        epsilon=0.2, learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.99, adam_epsilon=1e-8, max_grad_norm=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, shuffle_dataset=False,
        logging_steps=1, report_to="none", save_strategy="no", seed=a.seed, dataloader_num_workers=0,
        disable_tqdm=True, log_completions=False)
    timer = StepTimer()
    started = time.perf_counter()
    trainer = BenchGRPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                               processing_class=tokenizer, reward_funcs=[verifiable_reward], callbacks=[timer])
    trainer.bench_generation, trainer.bench_tokens, trainer.bench_prompt_ids = [], [], []
    setup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
    steps = []
    for i, seconds in enumerate(timer.seconds):
        step = {"step": i + 1, "seconds": seconds, "generation_seconds": trainer.bench_generation[i],
                "tokens": trainer.bench_tokens[i], "reward_mean": sum(rewards_seen[i]) / len(rewards_seen[i])}
        if i < len(logs):
            step.update({k: logs[i][k] for k in ("loss", "grad_norm", "clip_ratio/region_mean") if k in logs[i]})
        steps.append(step)

    # greedy held-out accuracy with the trained model
    started = time.perf_counter()
    policy = trainer.model.eval()
    tokenizer.padding_side = "left"
    right = 0
    texts = []
    for start in range(0, len(held), 32):
        chunk = held[start:start + 32]
        enc = [tokenizer.apply_chat_template([{"role": "user", "content": p.prompt}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in chunk]
        width = max(len(e) for e in enc)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + list(e) for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        with torch.no_grad():
            gen = policy.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.max_new_tokens,
                                  do_sample=False, eos_token_id=a.eos_id, pad_token_id=tokenizer.pad_token_id)
        for row, p in zip(gen[:, width:].tolist(), chunk):
            if a.eos_id in row:
                row = row[:row.index(a.eos_id) + 1]
            text = tokenizer.decode(row, skip_special_tokens=True)
            texts.append(text)
            right += check(text, p)
    return {
        "tool": "trl", "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                                    "torch": torch.__version__},
        "settings": {"threads": torch.get_num_threads(), "loss_type": trainer.args.loss_type,
                     "beta": trainer.args.beta, "optim": trainer.args.optim,
                     "attn_implementation": model.config._attn_implementation,
                     "dtype": str(next(trainer.model.parameters()).dtype),
                     "generation_config": {k: v for k, v in trainer.generation_config.to_dict().items()
                                           if k in ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k",
                                                    "eos_token_id", "cache_implementation")}},
        "steps": steps, "prompt_ids": [rows[::a.group] for rows in trainer.bench_prompt_ids],  # one per prompt
        "setup_seconds": setup_seconds, "train_seconds": train_seconds,
        "heldout": {"accuracy": right / len(held), "problems": len(held), "seconds": time.perf_counter() - started,
                    "samples": texts[:2]},
    }


def main() -> None:
    a = parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    sync = os.fdopen(os.dup(1), "w") if a.lockstep else None
    with stdout_to_stderr():
        result = run(a, sync)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
