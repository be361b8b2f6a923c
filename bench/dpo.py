"""DPO benchmark: training speed of crawl2model's DPO (model/dpo.py on model/llama.py) against
TRL's DPOTrainer on the same model exported to Hugging Face format, with the same pairs, batches,
sequence length, optimizer, threads and dtype; one run per side.

    .venv/bin/python bench/dpo.py                               # 64 HH-harmless pairs, B8, max length 256
    .venv/bin/python bench/dpo.py --reference in-step           # reference forward inside every step
    .venv/bin/python bench/dpo.py --checkpoint c2m-data/checkpoints/sft/step-000060   # an existing model
    bash bench/setup_trl.sh                                     # the TRL venv alone (dpo.py runs it too)

Data: /work/shared/data/preference/hh-harmless-test-1000.jsonl (../shared/data beside the repo;
the benchmark says so and exits 0 when it is absent), read with model.chat_data.load_preferences.
Model: with no --checkpoint, a BPE tokenizer (tasks.bpe, vocab 8192) trained on the file's texts
and a randomly initialised ModelConfig.from_preset("small") Llama saved as a step-0 checkpoint;
model.hf.export_hf writes the Hugging Face folder (weights, tokenizer, chat template) TRL loads.

Same setting on both sides:
  pairs      the first N (default 64) pairs of the file whose rendered prompt is shorter than
             max length (TRL drops the others: no completion token would be left)
  tokens     crawl2model: encode_preference (no truncation there) then collate_pairs(max_len=L),
             which cuts prompt + completion to L tokens from the start; TRL: the exported
             tokenizer's chat template (apply_chat_template) and DataCollatorForPreference with
             max_length=L, truncation_mode="keep_start" (keep_end is deprecated in trl 1.16).
             Both sides' token ids are compared pair by pair (printed).
  batches    B pairs (chosen + rejected rows, right-padded), in file order on both sides
             (TRL's random sampler replaced by a sequential one); step i uses batch i mod N/B
  loss       sigmoid DPO, beta 0.1, summed completion log-probs
  optimizer  torch AdamW (TRL optim="adamw_torch", not its default fused one), constant lr 1e-5,
             betas 0.9/0.999, eps 1e-8, no weight decay, grad-norm clip 1.0, no accumulation
  numerics   fp32 (TRL's bf16 default off), no gradient checkpointing (TRL's default on),
             torch.set_num_threads(threads) in both processes, CPU
  reference  --reference precomputed (default): log-probs computed once before training
             (crawl2model precompute_reference; TRL precompute_ref_log_probs=True), timed apart;
             --reference in-step: a frozen copy runs a no-grad forward inside every step (TRL's
             default)

Measured: warm-up steps (default 1), then timed steps (default 10): forward, backward, clip,
AdamW step; not the collation nor TRL's logging. The two sides' steps alternate (crawl2model step
i, then TRL step i; the TRL process waits on a pipe meanwhile), so neither runs while the other
does and a busy machine slows both alike. steps/s = timed steps / their seconds; tokens/s =
non-pad tokens of chosen + rejected rows in those steps / the same seconds; the ratio is also
given from median step times (less sensitive to a load spike). Checks:
step-1 loss must be log 2 = 0.6931 on both (policy == reference); the losses of later steps
(after identical updates) and a no-grad loss on batch 1 with a slightly perturbed policy
(weights + 10% of each tensor's std as seeded noise, `--perturb`) against the unperturbed
reference are compared. Results: a table on stdout, bench/out/dpo.json (--reference in-step:
bench/out/dpo-in-step.json); work files in
bench/out/dpo/ (tokenizer, checkpoints, HF folders, pairs.jsonl, TRL's logs in trl/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
WORK = OUT / "dpo"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "preference" / "hh-harmless-test-1000.jsonl"
TRL_VENV = REPO / "bench" / ".venvs" / "trl"
SETUP_SCRIPT = REPO / "bench" / "setup_trl.sh"
PEER_SCRIPT = REPO / "bench" / "dpo_trl_peer.py"
sys.path.insert(0, str(REPO))

from model.chat_data import encode_preference, load_preferences, reasons  # noqa: E402
from model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from model.config import ModelConfig  # noqa: E402
from model.dpo import collate_pairs, dpo_batch_loss, pair_logps, precompute_reference  # noqa: E402
from model.hf import export_hf, tokenizer_folder  # noqa: E402
from model.llama import Llama  # noqa: E402
from model.tokenizer import load_tokenizer, save_tokenizer  # noqa: E402
from tasks.bpe import train_tokenizer  # noqa: E402

NO_TRUNCATION = 1 << 30


# --- inputs: tokenizer, model, pairs --------------------------------------------------------------


def build_tokenizer(pairs, vocab: int) -> Path:
    """A tasks.bpe tokenizer trained on every text of the preference file, saved in WORK."""
    texts = [m["content"] for p in pairs for m in p.prompt_messages] + [t for p in pairs for t in (p.chosen, p.rejected)]
    tokenizer = train_tokenizer((texts[i:i + 1000] for i in range(0, len(texts), 1000)), vocab_size=vocab)
    return save_tokenizer(tokenizer, WORK / "tokenizer")


def build_checkpoint(tokenizer_dir: Path, preset: str, max_length: int, seed: int) -> Path:
    """A randomly initialised step-0 checkpoint whose meta names the tokenizer folder."""
    vocab = load_tokenizer(tokenizer_dir).get_vocab_size()
    config = ModelConfig.from_preset(preset, vocab_size=vocab)
    if config.max_seq_len < max_length:  # positions 0..max_length-1 must exist
        config = ModelConfig.from_preset(preset, vocab_size=vocab, max_seq_len=max_length)
    torch.manual_seed(seed)
    model = Llama(config)
    return save_checkpoint(WORK / "checkpoint", model, None,
                           {"step": 0, "config": config.to_dict(), "tokenizer": str(tokenizer_dir)})


def load_llama(checkpoint: Path) -> Llama:
    meta = json.loads((checkpoint / "meta.json").read_text())
    model = Llama(ModelConfig.from_dict(meta["config"]))
    load_checkpoint(checkpoint, model)
    return model


def perturbed_checkpoint(checkpoint: Path, scale: float, seed: int) -> Path:
    """The checkpoint's weights + scale x (each tensor's std) x seeded N(0, 1) noise."""
    model = load_llama(checkpoint)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * (scale * float(param.std())))
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["tokenizer"] = str(tokenizer_folder(checkpoint).resolve())
    meta.pop("optimizer", None)  # no optimizer state is saved with it
    return save_checkpoint(WORK / "checkpoint-perturbed", model, None, meta)


def select_pairs(pairs, tokenizer, n: int, max_length: int) -> tuple[list, list[dict], dict]:
    """The first n pairs whose prompt is shorter than max_length tokens: (pairs, encodings, counts)."""
    chosen, encoded = [], []
    counts = {"prompt_too_long": 0, "truncated": 0}
    for pair in pairs:
        if len(chosen) == n:
            break
        enc = encode_preference(pair, tokenizer, max_len=NO_TRUNCATION)
        if len(enc["prompt_ids"]) >= max_length:
            counts["prompt_too_long"] += 1
            continue
        if len(enc["prompt_ids"]) + max(len(enc["chosen_ids"]), len(enc["rejected_ids"])) > max_length:
            counts["truncated"] += 1
        chosen.append(pair)
        encoded.append(enc)
    return chosen, encoded, counts


def trl_rows(pairs) -> list[dict]:
    """TRL's conversational preference format: prompt messages, one-assistant-message completions."""
    return [{"prompt": p.prompt_messages, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]


def row_tokens(enc: dict, max_length: int) -> int:
    """Non-pad tokens of a pair's two rows after keep-start truncation to max_length."""
    prompt = len(enc["prompt_ids"])
    return sum(min(prompt + len(enc[key]), max_length) for key in ("chosen_ids", "rejected_ids"))


# --- crawl2model's side -----------------------------------------------------------------------------


class Crawl2modelDPO:
    """crawl2model's DPO steps, one call at a time (so that bench/dpo.py can alternate them with
    TRL's): model/dpo.py's collate_pairs, precompute_reference or an in-step reference copy,
    dpo_batch_loss, then clip and torch AdamW."""

    def __init__(self, checkpoint: Path, encoded: list[dict], a):
        self.checkpoint, self.a = checkpoint, a
        torch.manual_seed(a.seed)
        self.model = load_llama(checkpoint).train()
        chunks = [encoded[i:i + a.batch] for i in range(0, len(encoded), a.batch)]
        self.batches = [collate_pairs(chunk, pad_id=0, max_len=a.max_length) for chunk in chunks]
        self.tokens = [sum(row_tokens(enc, a.max_length) for enc in chunk) for chunk in chunks]
        self.precompute_seconds, self.reference, self.refs = 0.0, None, None
        if a.reference == "precomputed":
            started = time.perf_counter()
            self.refs = precompute_reference(self.model, self.batches)
            self.precompute_seconds = time.perf_counter() - started
        else:
            self.reference = load_llama(checkpoint).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0)
        self.steps: list[dict] = []

    def step(self) -> dict:
        k = len(self.steps) % len(self.batches)
        batch = self.batches[k]
        started = time.perf_counter()
        if self.reference is None:
            ref_chosen, ref_rejected = self.refs[k]
        else:
            with torch.no_grad():
                ref_chosen, ref_rejected = pair_logps(self.reference, batch)
        loss, metrics = dpo_batch_loss(self.model, batch, ref_chosen, ref_rejected, beta=self.a.beta)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - started
        self.steps.append({"step": len(self.steps) + 1, "seconds": seconds, "tokens": self.tokens[k],
                           "loss": loss.item(), "grad_norm": grad_norm.item(), **metrics})
        return self.steps[-1]

    def perturbed(self, perturbed: Path) -> dict:
        """No-grad loss of batch 1 with the perturbed policy against the unperturbed reference."""
        policy, base = load_llama(perturbed).eval(), load_llama(self.checkpoint).eval()
        with torch.no_grad():
            ref_chosen, ref_rejected = pair_logps(base, self.batches[0])
            loss, metrics = dpo_batch_loss(policy, self.batches[0], ref_chosen, ref_rejected, beta=self.a.beta)
        return {"loss": loss.item(), **metrics}

    def result(self) -> dict:
        return {"tool": "crawl2model", "steps": self.steps, "precompute_seconds": self.precompute_seconds,
                "params": sum(p.numel() for p in self.model.parameters())}


# --- TRL's side (its own venv), in lockstep with crawl2model's ----------------------------------------


def _peer_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""})
    return env


def ensure_trl_venv(venv_dir: Path = TRL_VENV) -> Path:
    """Create/check the TRL venv with bench/setup_trl.sh; return its python."""
    print(f"[dpo] checking the TRL venv {venv_dir} (first time: installs, ~2.5 min)", file=sys.stderr, flush=True)
    proc = subprocess.run(["bash", str(SETUP_SCRIPT), str(venv_dir)], capture_output=True, text=True, env=_peer_env())
    sys.stderr.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{SETUP_SCRIPT} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}")
    return venv_dir / "bin" / "python"


def run_both(checkpoint: Path, encoded: list[dict], hf: Path, perturbed: Path | None, perturbed_hf: Path | None,
             pairs_file: Path, a) -> tuple[dict, dict | None]:
    """Both sides, steps alternating: crawl2model step i, then TRL step i (the peer waits on stdin
    before each step), so that neither runs while the other does and machine load hits both alike.
    TRL sets up first (tokenization, reference precompute), then crawl2model (its precompute)."""
    if a.skip_trl:
        ours = Crawl2modelDPO(checkpoint, encoded, a)
        for _ in range(a.warmup + a.steps):
            ours.step()
        return {**ours.result(), **({"perturbed": ours.perturbed(perturbed)} if perturbed else {})}, None
    python = ensure_trl_venv()
    out = WORK / "trl"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), str(PEER_SCRIPT), "--hf", str(hf), "--pairs", str(pairs_file), "--out", str(out),
           "--batch", str(a.batch), "--max-length", str(a.max_length), "--beta", str(a.beta), "--lr", str(a.lr),
           "--warmup", str(a.warmup), "--steps", str(a.steps), "--threads", str(a.threads),
           "--reference", a.reference, "--lockstep"]
    if perturbed_hf is not None:
        cmd += ["--perturbed", str(perturbed_hf)]
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
            expect("ready")  # TRL's setup is done and it waits before its first step
            ours = Crawl2modelDPO(checkpoint, encoded, a)
            for i in range(a.warmup + a.steps):
                step = ours.step()
                print(f"  step {i + 1:2d}  crawl2model {step['seconds']:6.2f} s loss {step['loss']:.6f}",
                      end="", flush=True)
                if i:
                    expect("ready")
                proc.stdin.write("go\n")
                proc.stdin.flush()
                done = expect("done").split()
                print(f"  | TRL {float(done[2]):6.2f} s", flush=True)
            proc.stdin.close()
            rest = proc.stdout.read()
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
    result = ours.result()
    if perturbed is not None:
        result["perturbed"] = ours.perturbed(perturbed)
    return result, json.loads(lines[-1])


# --- report -----------------------------------------------------------------------------------------


def speed(result: dict, warmup: int) -> dict:
    timed = result["steps"][warmup:]
    seconds = sum(s["seconds"] for s in timed)
    step_times = sorted(s["seconds"] for s in timed)
    return {"steps_per_s": len(timed) / seconds, "tokens_per_s": sum(s["tokens"] for s in timed) / seconds,
            "timed_seconds": seconds, "median_step_seconds": step_times[len(step_times) // 2],
            "tokens_timed": sum(s["tokens"] for s in timed)}


def compare_tokens(encoded: list[dict], tokens_file: Path) -> dict:
    trl = [json.loads(line) for line in tokens_file.read_text().splitlines() if line.strip()]
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    same = sum(1 for ours, theirs in zip(encoded, trl) if all(list(ours[k]) == list(theirs[k]) for k in keys))
    first_diff = next(({"pair": i, **{f"{k}_lengths": [len(ours[k]), len(theirs[k])] for k in keys}}
                       for i, (ours, theirs) in enumerate(zip(encoded, trl))
                       if any(list(ours[k]) != list(theirs[k]) for k in keys)), None)
    count = lambda rows: sum(len(r[k]) for r in rows for k in keys)  # noqa: E731
    return {"pairs": [len(encoded), len(trl)], "identical_pairs": same, "tokens_untruncated": [count(encoded), count(trl)],
            "first_difference": first_diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--checkpoint", type=Path, help="an existing crawl2model checkpoint (default: a fresh random one)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=8192, help="tokenizer vocab when no --checkpoint is given")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", choices=["precomputed", "in-step"], default="precomputed")
    ap.add_argument("--perturb", type=float, default=0.1, help="noise scale for the perturbed-policy check (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true")
    a = ap.parse_args()

    if not a.data.exists():
        print(f"skipped: no preference data at {a.data} (the shared data folder ../shared/data beside the repo "
              "is absent); pass --data FILE with {prompt, chosen, rejected} or HH rows")
        return
    torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    all_pairs, quarantine = load_preferences(a.data)
    if a.checkpoint:
        checkpoint = a.checkpoint.resolve()
        tokenizer_dir = tokenizer_folder(checkpoint)
    else:
        tokenizer_dir = build_tokenizer(all_pairs, a.vocab)
        checkpoint = build_checkpoint(tokenizer_dir, a.preset, a.max_length, a.seed)
    config = ModelConfig.from_dict(json.loads((checkpoint / "meta.json").read_text())["config"])
    if config.max_seq_len < a.max_length:
        sys.exit(f"{checkpoint} has max_seq_len {config.max_seq_len} < --max-length {a.max_length}")
    tokenizer = load_tokenizer(tokenizer_dir)
    pairs, encoded, counts = select_pairs(all_pairs, tokenizer, a.pairs, a.max_length)
    if len(pairs) < a.pairs:
        print(f"note: only {len(pairs)} pairs fit (prompt < {a.max_length} tokens)", flush=True)
    hf = export_hf(checkpoint, WORK / "hf")
    perturbed = perturbed_hf = None
    if a.perturb > 0:
        perturbed = perturbed_checkpoint(checkpoint, a.perturb, a.seed)
        perturbed_hf = export_hf(perturbed, WORK / "hf-perturbed")
    pairs_file = WORK / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps(row) + "\n" for row in trl_rows(pairs)))
    prepare_seconds = time.perf_counter() - started

    lengths = [row_tokens(enc, a.max_length) / 2 for enc in encoded]
    print(f"DPO on CPU ({a.threads} threads), fp32: {len(pairs)} pairs of {a.data.name} ({len(all_pairs)} read, "
          f"{len(quarantine)} quarantined{', ' + str(dict(reasons(quarantine))) if quarantine else ''}; "
          f"{counts['prompt_too_long']} skipped: prompt >= {a.max_length} tokens; {counts['truncated']} cut to "
          f"{a.max_length}), mean row {sum(lengths) / len(lengths):.0f} tokens", flush=True)
    print(f"model: {checkpoint} ({config.num_params():,} parameters, dim {config.dim}, {config.n_layers} layers, "
          f"vocab {config.vocab_size}); batch {a.batch} pairs, max length {a.max_length}, beta {a.beta}, sigmoid, "
          f"AdamW lr {a.lr}, clip 1.0; reference: {a.reference}; {a.warmup} warm-up + {a.steps} timed steps "
          f"(prepared in {prepare_seconds:.1f} s)", flush=True)

    ours, trl = run_both(checkpoint, encoded, hf, perturbed, perturbed_hf, pairs_file, a)
    ours_speed = speed(ours, a.warmup)
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "data": str(a.data), "checkpoint": str(checkpoint), "hf": str(hf), "params": ours["params"],
              "pairs": len(pairs), "selection": counts, "crawl2model": {**ours, **ours_speed}}
    if trl:
        trl_speed = speed(trl, a.warmup)
        report["trl"] = {**trl, **trl_speed}
        report["tokens"] = compare_tokens(encoded, Path(trl["tokens_file"]))

    # --- the table
    sides = [("crawl2model", ours, ours_speed)] + ([(f"TRL {trl['versions']['trl']}", trl, trl_speed)] if trl else [])
    print(f"\n{'side':14s} {'steps/s':>8s} {'tokens/s':>9s} {'step s (median)':>15s} {'step-1 loss':>12s} "
          f"{'step-2 loss':>12s} {'perturbed loss':>15s} {'ref precompute s':>17s}")
    for name, result, sp in sides:
        step2 = f"{result['steps'][1]['loss']:.6f}" if len(result["steps"]) > 1 else "-"
        pert = f"{result['perturbed']['loss']:.6f}" if "perturbed" in result else "-"
        print(f"{name:14s} {sp['steps_per_s']:8.3f} {sp['tokens_per_s']:9,.0f} {sp['median_step_seconds']:15.3f} "
              f"{result['steps'][0]['loss']:12.6f} {step2:>12s} {pert:>15s} {result['precompute_seconds']:17.2f}")
    checks = {"log2": math.log(2), "ours_step1_minus_log2": ours["steps"][0]["loss"] - math.log(2)}
    if trl:
        tok = report["tokens"]
        ratio = ours_speed["steps_per_s"] / trl_speed["steps_per_s"]
        n = min(len(ours["steps"]), len(trl["steps"]))
        loss_diffs = [abs(ours["steps"][i]["loss"] - trl["steps"][i]["loss"]) for i in range(n)]
        checks.update({
            "trl_step1_minus_log2": trl["steps"][0]["loss"] - math.log(2),
            "step_loss_abs_diff": loss_diffs,
            "step1_logps_chosen": [ours["steps"][0]["logps/chosen"], trl["steps"][0].get("logps/chosen")],
            "step1_logps_rejected": [ours["steps"][0]["logps/rejected"], trl["steps"][0].get("logps/rejected")],
            "tokens_per_step_equal": [s["tokens"] for s in ours["steps"][:n]] == [s["tokens"] for s in trl["steps"][:n]],
        })
        if "perturbed" in ours and "perturbed" in trl:
            checks["perturbed_loss"] = [ours["perturbed"]["loss"], trl["perturbed"]["loss"]]
            checks["perturbed_margin"] = [ours["perturbed"]["rewards/margins"], trl["perturbed"].get("rewards/margins")]
        report.update({"ratio_steps_per_s": ratio,
                       "ratio_tokens_per_s": ours_speed["tokens_per_s"] / trl_speed["tokens_per_s"],
                       "ratio_median_step": trl_speed["median_step_seconds"] / ours_speed["median_step_seconds"]})
        print(f"\ncrawl2model / TRL: {ratio:.2f}x steps/s, {report['ratio_tokens_per_s']:.2f}x tokens/s "
              f"(goal >= 1.0x); from median step times {report['ratio_median_step']:.2f}x")
        print(f"token ids: {tok['identical_pairs']}/{len(pairs)} pairs identical (crawl2model encode_preference vs "
              f"TRL apply_chat_template); untruncated tokens {tok['tokens_untruncated'][0]:,} vs "
              f"{tok['tokens_untruncated'][1]:,}; tokens per step equal: {checks['tokens_per_step_equal']}"
              + (f"; first difference: {tok['first_difference']}" if tok["first_difference"] else ""))
        print(f"step-1 loss - log 2: crawl2model {checks['ours_step1_minus_log2']:+.2e}, TRL "
              f"{checks['trl_step1_minus_log2']:+.2e}; step-1 mean logps chosen {checks['step1_logps_chosen'][0]:.4f} "
              f"vs {checks['step1_logps_chosen'][1]:.4f}; max |loss diff| over {n} steps {max(loss_diffs):.2e} "
              f"(step 2: {loss_diffs[1] if n > 1 else float('nan'):.2e})")
        if "perturbed_loss" in checks:
            p = checks["perturbed_loss"]
            print(f"perturbed policy (no grad, batch 1): loss {p[0]:.6f} vs {p[1]:.6f} (|diff| {abs(p[0] - p[1]):.2e}); "
                  f"margin {checks['perturbed_margin'][0]:.5f} vs {checks['perturbed_margin'][1]:.5f}")
        print(f"TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}, torch "
              f"{trl['versions']['torch']} (peer venv {TRL_VENV.relative_to(REPO)}); crawl2model torch {torch.__version__}")
    report["checks"] = checks
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / ("dpo.json" if a.reference == "precomputed" else "dpo-in-step.json")).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
