"""The TRL peer of bench/dpo.py: DPO steps with trl's DPOTrainer on a Hugging Face export of the
crawl2model model, in the TRL venv (bench/setup_trl.sh), printing ONE JSON line on stdout.

    bench/.venvs/trl/bin/python bench/dpo_trl_peer.py --hf bench/out/dpo/hf --pairs bench/out/dpo/pairs.jsonl \\
        --out bench/out/dpo/trl [--batch 8 --max-length 256 --beta 0.1 --lr 1e-5 --warmup 1 --steps 10 \\
        --threads 2 --reference precomputed|in-step --perturbed bench/out/dpo/hf-perturbed --lockstep]

bench/dpo.py runs it (with the venv's python, stdout = the JSON line, stderr = TRL's logs) with
--lockstep: before each step the peer prints "ready N" on stdout and waits for a line on stdin,
after it prints "done N SECONDS", so the orchestrator alternates steps of the two sides (machine load
then hits both alike; neither runs while the other does).
Imports nothing from crawl2model: only trl, transformers, torch, datasets, and bench/peer.py's
stdlib helper.

Settings: DPOConfig(per_device_train_batch_size=batch, gradient_accumulation_steps=1,
max_length=max_length, truncation_mode="keep_start" (the only non-deprecated mode in trl 1.16),
beta, loss_type=["sigmoid"], learning_rate=lr with a constant schedule, optim="adamw_torch"
(betas 0.9/0.999, eps 1e-8, no weight decay), max_grad_norm=1.0, bf16=False (fp32),
gradient_checkpointing=False (TRL's default is True), use_cpu=True,
precompute_ref_log_probs=(reference == "precomputed")). The train sampler is sequential (the
Trainer's RandomSampler is replaced), so step i uses pairs [i*B, (i+1)*B) mod N, the same
batches as crawl2model's side. max_steps = warmup + steps.

Timing: a callback stamps on_step_begin and on_step_end: forward (and, in-step, the reference
forward), backward, clipping, AdamW step, scheduler, zero_grad; not the data loader/collation nor
logging. Tokens per step: the batch's attention_mask sum (chosen + rejected rows, no padding).

Output JSON: {"tool": "trl", "versions", "settings", "pairs", "tokens_file", "steps": [{"seconds",
"tokens", "loss", "logps/chosen", ...}], "precompute_seconds", "train_seconds", "perturbed": {...}}.
tokens_file (OUT/tokens.jsonl) holds TRL's tokenized prompt_ids/chosen_ids/rejected_ids per pair,
for bench/dpo.py to compare with crawl2model's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from peer import stdout_to_stderr  # bench/ is this script's folder, so on sys.path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hf", type=Path, required=True, help="Hugging Face model folder (policy and reference)")
    ap.add_argument("--pairs", type=Path, required=True, help="JSONL of conversational pairs {prompt, chosen, rejected}")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", choices=["precomputed", "in-step"], default="precomputed")
    ap.add_argument("--perturbed", type=Path, help="HF folder of a perturbed policy: no-grad loss vs --hf as reference")
    ap.add_argument("--lockstep", action="store_true", help="wait for a stdin line before each step (see above)")
    return ap.parse_args(argv)


def config(a: argparse.Namespace, output_dir: Path, max_steps: int, precompute: bool):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(output_dir), per_device_train_batch_size=a.batch, per_device_eval_batch_size=a.batch,
        gradient_accumulation_steps=1, max_steps=max_steps, learning_rate=a.lr, lr_scheduler_type="constant",
        warmup_steps=0, optim="adamw_torch", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=1.0, beta=a.beta, loss_type=["sigmoid"], max_length=a.max_length, truncation_mode="keep_start",
        precompute_ref_log_probs=precompute, bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, dataloader_num_workers=0, disable_tqdm=True,
        dataset_num_proc=None)


def run(a: argparse.Namespace, sync=None) -> dict:
    import torch

    torch.set_num_threads(a.threads)
    import accelerate
    import datasets
    import transformers
    import trl
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    class BenchDPOTrainer(DPOTrainer):
        """DPOTrainer with a sequential sampler, per-step token/loss records and a timed precompute."""
        precompute_seconds = 0.0

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def _precompute_ref_logps(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                type(self).precompute_seconds += time.perf_counter() - started

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.bench_tokens.append(int(inputs["attention_mask"].sum()))
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.bench_losses.append(float(loss))
            return loss

    class StepTimer(TrainerCallback):
        """Stamps each optimizer step; with `sync`, announces it and waits for the orchestrator."""

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
    rows = [json.loads(line) for line in a.pairs.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(a.hf)
    model = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)
    max_steps = a.warmup + a.steps
    timer = StepTimer()
    started = time.perf_counter()
    trainer = BenchDPOTrainer(model=model, args=config(a, out / "run", max_steps, a.reference == "precomputed"),
                              train_dataset=dataset, processing_class=tokenizer, callbacks=[timer])
    setup_seconds = time.perf_counter() - started
    trainer.bench_tokens, trainer.bench_losses = [], []
    prepared = trainer.train_dataset
    with open(out / "tokens.jsonl", "w") as f:
        for row in prepared:
            f.write(json.dumps({k: row[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}) + "\n")

    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    metric_names = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                    "logps/chosen", "logps/rejected", "grad_norm")
    steps = []
    for i, seconds in enumerate(timer.seconds):
        step = {"step": i + 1, "seconds": seconds, "tokens": trainer.bench_tokens[i], "loss": trainer.bench_losses[i]}
        if i < len(logs):
            step.update({k: logs[i][k] for k in metric_names if k in logs[i]})
        steps.append(step)

    result = {
        "tool": "trl",
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__,
                     "accelerate": accelerate.__version__, "datasets": datasets.__version__},
        "settings": {"batch": a.batch, "max_length": a.max_length, "beta": a.beta, "lr": a.lr,
                     "reference": a.reference, "threads": torch.get_num_threads(), "optim": trainer.args.optim,
                     "attn_implementation": model.config._attn_implementation,
                     "dtype": str(next(trainer.model.parameters()).dtype),
                     "gradient_checkpointing": trainer.args.gradient_checkpointing, "bf16": trainer.args.bf16},
        "pairs": len(prepared), "tokens_file": str(out / "tokens.jsonl"), "steps": steps,
        "setup_seconds": setup_seconds, "precompute_seconds": BenchDPOTrainer.precompute_seconds,
        "train_seconds": train_seconds,
    }
    if a.perturbed:
        result["perturbed"] = perturbed_loss(a, prepared, BenchDPOTrainer, tokenizer)
    return result


def perturbed_loss(a: argparse.Namespace, prepared, trainer_class, tokenizer) -> dict:
    """TRL's DPO loss (no gradient, eval mode) of the first batch with the perturbed policy and the
    unperturbed model as reference, computed inside the step (so through TRL's own code)."""
    import torch
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(a.perturbed, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(a.hf, dtype=torch.float32)
    first = prepared.select(range(a.batch))
    trainer = trainer_class(model=policy, ref_model=reference,
                            args=config(a, a.out.resolve() / "run-perturbed", 1, precompute=False),
                            train_dataset=first, processing_class=tokenizer)
    trainer.model.eval()
    batch = trainer.data_collator([first[i] for i in range(len(first))])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items() if v and isinstance(v[-1], float)}
    return {"loss": float(loss), **{k: metrics[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                                             "logps/chosen", "logps/rejected") if k in metrics}}


def main() -> None:
    a = parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    sync = os.fdopen(os.dup(1), "w") if a.lockstep else None  # the real stdout, kept for the step handshake
    with stdout_to_stderr():
        result = run(a, sync)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
