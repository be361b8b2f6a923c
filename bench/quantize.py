"""Every export variant of one checkpoint, measured in one run: size, bits per weight, val
perplexity on the same token windows, generation tokens/s; crawl2model's torch variants side by
side with llama.cpp running the GGUF files of the same precision.

    .venv/bin/python bench/quantize.py                        # newest checkpoint under ./c2m-data (make demo)
    .venv/bin/python bench/quantize.py --checkpoint c2m-data/checkpoints/<id>/step-000150 --windows 96

Needs llama-cpp-python (`make install` builds it) for the GGUF rows and the k-quants. Goals
(issue 8): Q8_0 within 0.5% of F16's perplexity, 4-bit within 5%.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import llamacpp  # noqa: E402
from crawl2model.layout import DataRoot  # noqa: E402
from model.variants import build_variants, measure_variants, val_windows, variant_table  # noqa: E402

GGUF = ["f32", "f16", "bf16", "q8_0", "q5_0", "q4_1", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]
PAIRS = [("torch-fp32", "gguf-f32"), ("torch-int8", "gguf-q8_0"), ("torch-int4", "gguf-q4_0")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: newest under --data-root)")
    parser.add_argument("--data-root", type=Path, default=Path("c2m-data"))
    parser.add_argument("--windows", type=int, default=96, help="val windows every variant is scored on")
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: all)")
    parser.add_argument("--out", type=Path, help="where the files go (default: a temporary folder)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or DataRoot(args.data_root).newest_checkpoint()
    quants = GGUF if llamacpp.available() else [q for q in GGUF if "_k" not in q]
    with tempfile.TemporaryDirectory(prefix="c2m-quant-") as tmp:
        out = args.out or Path(tmp)
        log = lambda line: print(line, file=sys.stderr)  # noqa: E731
        variants = build_variants(checkpoint, out, ["gguf", "torch"], quants, ["int8", "int4"], log=log)
        windows = val_windows(checkpoint, args.windows)
        measure_variants(variants, checkpoint, windows, args.gen_tokens, args.threads, log=log)
    print(f"checkpoint {checkpoint}: {variants[0].params:,} parameters; {len(windows)} val windows of "
          f"{len(windows[0])} tokens; greedy generation of {args.gen_tokens} tokens; "
          f"llama.cpp {'installed' if llamacpp.available() else 'NOT installed: GGUF rows not measured'}\n")
    print(variant_table(variants))

    by_name = {v.name: v for v in variants}
    print("\n| precision | crawl2model ppl | llama.cpp ppl | crawl2model tokens/s | llama.cpp tokens/s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for ours, theirs in PAIRS:
        a, b = by_name.get(ours), by_name.get(theirs)
        if a and b and a.ppl and b.ppl:
            print(f"| {ours.removeprefix('torch-')} vs {theirs.removeprefix('gguf-')} | {a.ppl:.3f} | {b.ppl:.3f} | "
                  f"{a.tokens_per_s:,.0f} | {b.tokens_per_s:,.0f} | {a.tokens_per_s / b.tokens_per_s:.2f}x |")

    f16 = by_name.get("gguf-f16")
    if f16 and f16.ppl:
        print("\ngoals, perplexity vs gguf-f16:")
        for v in variants:
            if v.format == "gguf" and v.ppl and v.name != "gguf-f16":
                delta = 100 * (v.ppl / f16.ppl - 1)
                limit = 0.5 if v.name == "gguf-q8_0" else 5.0 if v.bits_per_weight < 6.5 else None
                verdict = "" if limit is None else f"  (goal <= {limit}%: {'met' if abs(delta) <= limit else 'MISSED'})"
                print(f"  {v.name:<12} {delta:+.2f}%{verdict}")
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
