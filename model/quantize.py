"""Weight-only int8 / int4 quantization of a Llama (torch only) for crawl2model's own inference:
the linear layers keep integer weights and scales, and dequantize on the fly in each forward.

    python -m model.quantize c2m-data/checkpoints/<run>/step-000300 out/int4 --bits 4 --val-batches 20

    from model.quantize import quantize_model, save_quantized, load_quantized, weight_bits
    qmodel = quantize_model(model, bits=4, group_size=32)   # a deepcopy; `model` is untouched
    save_quantized(qmodel, Path("out/int4"), meta)          # model.safetensors + meta.json
    qmodel, meta = load_quantized(Path("out/int4"))         # then model.generate.generate(qmodel, ...)

Schemes (the scales are float16, rounded up so no weight is ever clipped):
  int8  symmetric per output channel: scale = absmax(row) / 127, q = round(w / scale) in [-127, 127].
  int4  asymmetric per row and group of `group_size` input columns: scale = (max - min) / 15 over
        the group with 0 forced into [min, max], an integer zero point z in [0, 15] (uint8), and
        q = round(w / scale) + z in [0, 15]; w ~ (q - z) * scale. On Gaussian and on the demo
        checkpoint's trained weights this has ~17% less relative error than symmetric int4
        (absmax / 7, levels -7..7), since it uses all 16 levels. Two values are packed per
        byte along the input dimension (even column in the low nibble).
Either way |w - dequant(w)| <= scale / 2 for every weight. Bits per weight with the scales:
int8 8 + 16 / in_features; int4 4 + 24 / group_size (4.75 at 32).

Every nn.Linear of the transformer blocks is replaced by a QuantLinear, and the output projection
too with include_output. With tied embeddings the output projection gets its own quantized copy
and the token embedding stays float (an embedding lookup is a gather, nothing to gain in speed),
so the tie is broken. Embeddings and norms stay float. A quantized folder is a checkpoint folder
(model.checkpoint: safetensors + meta.json, written under a temporary name, nothing pickled)
whose meta.json also has "quantization": bits, group_size, scheme and the quantized layers.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.llama import Llama

SCHEMES = {8: "int8 symmetric per output channel", 4: "int4 asymmetric grouped, packed two per byte"}


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """float32 scales -> float16, rounded up (never below the exact scale, so nothing clips) and
    at least float16's smallest normal number (an all-zero row/group still divides)."""
    tiny = torch.finfo(torch.float16).tiny
    scale = scale.float().clamp_min(tiny)
    half = scale.half()
    return torch.where(half.float() < scale, torch.nextafter(half, torch.full_like(half, math.inf)), half)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) float -> int8 q (out, in), float16 scales (out, 1); weight ~ q * scales."""
    w = weight.detach().float()
    scales = _fp16_scale(w.abs().amax(dim=1, keepdim=True) / 127)
    q = torch.round(w / scales.float()).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, in) float -> uint8 q in [0, 15] (out, in), unpacked; float16 scales and uint8 zero
    points (out, in // group_size); weight ~ (q - zero) * scale within each group."""
    out_features, in_features = weight.shape
    groups = weight.detach().float().reshape(out_features, in_features // group_size, group_size)
    low = groups.amin(dim=-1).clamp_max(0)
    high = groups.amax(dim=-1).clamp_min(0)
    scales = _fp16_scale((high - low) / 15)
    zeros = torch.round(-low / scales.float()).clamp(0, 15)
    q = (torch.round(groups / scales.float()[..., None]) + zeros[..., None]).clamp(0, 15)
    return q.reshape(out_features, in_features).to(torch.uint8), scales, zeros.to(torch.uint8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 values in [0, 15] (..., n) -> (..., ceil(n / 2)) bytes: even index low nibble, odd high."""
    if q.shape[-1] % 2:
        q = F.pad(q, (0, 1))
    return (q[..., 0::2] | (q[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of pack_int4: (..., ceil(n / 2)) bytes -> uint8 values (..., n)."""
    both = torch.stack([packed & 0x0F, packed >> 4], dim=-1)
    return both.reshape(*packed.shape[:-1], -1)[..., :n]


def check_args(bits: int, group_size: int | None, in_features: int | None = None, name: str = "weight") -> None:
    if bits not in SCHEMES:
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")
    if bits == 4:
        if not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        if in_features is not None and in_features % group_size:
            raise ValueError(f"{name}: in_features {in_features} is not divisible by group_size {group_size}")


class QuantLinear(nn.Module):
    """A bias-free linear layer with int8 or packed int4 weights (buffers); forward is
    x @ dequantize(x.dtype).T, the weight rebuilt on every call in the activation's dtype."""

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int | None = 32):
        super().__init__()
        check_args(bits, group_size, in_features)
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.group_size = group_size if bits == 4 else None
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features, 1, dtype=torch.float16))
        else:
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16))
            self.register_buffer("zeros", torch.zeros(out_features, groups, dtype=torch.uint8))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int, group_size: int | None = 32, name: str = "weight") -> "QuantLinear":
        out_features, in_features = weight.shape
        check_args(bits, group_size, in_features, name)
        layer = cls(in_features, out_features, bits, group_size).to(weight.device)
        if bits == 8:
            layer.qweight, layer.scales = quantize_int8(weight)
        else:
            q, layer.scales, layer.zeros = quantize_int4(weight, group_size)
            layer.qweight = pack_int4(q)
        return layer

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scales = self.scales.to(dtype)
        if self.bits == 8:
            return self.qweight.to(dtype) * scales
        q = unpack_int4(self.qweight, self.in_features).to(dtype)
        q = q.view(self.out_features, -1, self.group_size) - self.zeros.to(dtype)[..., None]
        return (q * scales[..., None]).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype))

    def _apply(self, fn, recurse=True):
        # model.to(torch.bfloat16) would round the float16 scales to bf16 (8 significant bits);
        # keep them float16 and only follow the integer buffers to their device.
        scales = self.scales
        super()._apply(fn, recurse)
        self.scales = scales.to(self.qweight.device)
        return self

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, " \
               f"group_size={self.group_size}"


def quantizable_layers(model: Llama, include_output: bool = True) -> list[str]:
    """Module names of the nn.Linear layers quantize_model replaces."""
    names = [f"layers.{name}" for name, module in model.layers.named_modules() if isinstance(module, nn.Linear)]
    return names + (["output"] if include_output else [])


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model(model: Llama, bits: int, group_size: int = 32, include_output: bool = True) -> Llama:
    """A deepcopy of `model` with its block linears (and the output projection) as QuantLinear."""
    check_args(bits, group_size)
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for name in quantizable_layers(quantized, include_output):
            linear = quantized.get_submodule(name)
            _replace(quantized, name, QuantLinear.from_weight(linear.weight, bits, group_size, name))
    return quantized.eval()


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def weight_bits(model: nn.Module) -> float:
    """Storage bits per weight of the quantized layers, scales and zero points included."""
    layers = quant_layers(model).values()
    if not layers:
        raise ValueError("the model has no quantized layers")
    stored = sum(b.numel() * b.element_size() * 8 for layer in layers for b in layer.buffers())
    return stored / sum(layer.in_features * layer.out_features for layer in layers)


def quantization_error(weight: torch.Tensor, bits: int, group_size: int | None = 32) -> dict:
    """Max absolute and relative Frobenius error of quantizing one (out, in) weight."""
    w = weight.detach().float()
    error = w - QuantLinear.from_weight(w, bits, group_size).dequantize(torch.float32)
    return {"max_abs": error.abs().max().item(),
            "rel_frobenius": (error.norm() / w.norm().clamp_min(1e-30)).item()}


def save_quantized(model: Llama, path: Path, meta: dict) -> Path:
    """A folder with model.safetensors (integer weights, scales, float rest) and meta.json."""
    layers = quant_layers(model)
    if not layers:
        raise ValueError("the model has no quantized layers: quantize_model it first")
    first = next(iter(layers.values()))
    meta = {k: v for k, v in meta.items() if k != "optimizer"}
    meta["config"] = model.config.to_dict()
    meta["quantization"] = {"bits": first.bits, "group_size": first.group_size, "scheme": SCHEMES[first.bits],
                            "scale_dtype": "float16", "layers": list(layers)}
    return save_checkpoint(Path(path), model, None, meta)


def load_quantized(path: Path) -> tuple[Llama, dict]:
    """(model in eval mode, meta.json) from a save_quantized folder; CheckpointError otherwise."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no meta.json)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/meta.json is corrupt: {exc}") from None
    if "quantization" not in meta:
        raise CheckpointError(f"{path} is not a quantized checkpoint (no 'quantization' in meta.json); "
                              "load it with model.sampling.load_model")
    try:
        spec = meta["quantization"]
        model = Llama(ModelConfig.from_dict(meta["config"]))
        for name in spec["layers"]:
            linear = model.get_submodule(name)
            _replace(model, name, QuantLinear(linear.in_features, linear.out_features, spec["bits"], spec["group_size"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}/meta.json does not describe a quantized model: {exc}") from None
    try:
        load_checkpoint(path, model)
    except RuntimeError as exc:  # load_state_dict: a tensor of the wrong shape
        raise CheckpointError(f"{path}/model.safetensors does not fit its meta.json: {exc}") from None
    return model.eval(), meta


@torch.no_grad()
def val_loss(model: Llama, manifest: str | Path, batches: int, batch_size: int = 16) -> float:
    """Mean cross-entropy over the first batches * batch_size val windows (as model.train evaluates)."""
    from model.data import ShardBatches

    val = ShardBatches(manifest, "val", model.config.max_seq_len, batch_size)
    losses = [model(x, y)[1].item() for x, y in val.eval_batches(batches)]
    return sum(losses) / len(losses)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a training checkpoint folder (step-*)")
    parser.add_argument("out", help="the quantized folder to write")
    parser.add_argument("--bits", type=int, choices=sorted(SCHEMES), default=8)
    parser.add_argument("--group-size", type=int, default=32, help="int4 columns per scale")
    parser.add_argument("--keep-output-float", action="store_true", help="leave the output projection float")
    parser.add_argument("--val-batches", type=int, default=0, help="also compare val loss on this many batches of 16")
    args = parser.parse_args(argv)
    from model.sampling import load_model

    try:
        model, meta = load_model(args.checkpoint)
        quantized = quantize_model(model, args.bits, args.group_size, not args.keep_output_float)
        out = save_quantized(quantized, Path(args.out), meta)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    report = {"out": str(out), "bits_per_weight": round(weight_bits(quantized), 3),
              "bytes": os.path.getsize(out / "model.safetensors"),
              "float_bytes": os.path.getsize(Path(args.checkpoint) / "model.safetensors")}
    if args.val_batches:
        manifest = meta["train"]["manifest"]
        report["val_loss_float"] = val_loss(model, manifest, args.val_batches)
        report["val_loss_quantized"] = val_loss(quantized, manifest, args.val_batches)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
