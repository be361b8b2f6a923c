"""Weight-only quantization (model/quantize.py): the per-row / per-group error bounds, int4
packing, a briefly trained tiny model's quantized logits, loss and KV-cache generation, and the
save/load round trip with its file size and errors. CPU, a few seconds."""

from __future__ import annotations

import os

import pytest
import torch

from model.checkpoint import CheckpointError, save_checkpoint
from model.config import ModelConfig
from model.generate import generate
from model.llama import Llama
from model.quantize import (QuantLinear, load_quantized, pack_int4, quantization_error, quantize_int4,
                            quantize_int8, quantize_model, save_quantized, unpack_int4, weight_bits)

VOCAB = 97


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra intra-op threads only slow them down
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    """A tiny model after 30 AdamW steps on one repeated batch (float loss ~1, not memorized yet),
    so its weights have moved away from the Gaussian init."""
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=VOCAB))
    tokens = torch.randint(0, VOCAB, (8, 65))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(30):
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval(), inputs, targets


def test_int8_per_row_bound_and_error():
    torch.manual_seed(0)
    weight = torch.randn(96, 200) * torch.rand(96, 1)  # rows of different magnitude
    q, scales = quantize_int8(weight)
    assert q.dtype == torch.int8 and scales.dtype == torch.float16 and scales.shape == (96, 1)
    error = (weight - q.float() * scales.float()).abs()
    assert (error <= scales.float() / 2 * (1 + 1e-6)).all()
    assert quantization_error(weight, 8)["rel_frobenius"] < 0.01  # ~0.007 for Gaussian rows


def test_int4_per_group_bound_and_error():
    torch.manual_seed(0)
    weight = torch.randn(64, 96) + 0.3 * torch.randn(64, 1)  # rows with an offset: asymmetric groups
    q, scales, zeros = quantize_int4(weight, group_size=32)
    assert q.max() <= 15 and scales.shape == zeros.shape == (64, 3)
    dequant = (q.float().view(64, 3, 32) - zeros.float()[..., None]) * scales.float()[..., None]
    error = (weight.view(64, 3, 32) - dequant).abs()
    assert (error <= scales.float()[..., None] / 2 * (1 + 1e-6)).all()
    gaussian = torch.randn(256, 256)
    assert quantization_error(gaussian, 4, 32)["rel_frobenius"] < 0.09  # ~0.081 (symmetric: ~0.097)
    assert quantization_error(gaussian, 4, 128)["rel_frobenius"] < 0.11  # larger groups, larger error
    assert quantization_error(gaussian, 4, 32)["max_abs"] < quantization_error(gaussian, 4, 128)["max_abs"]


def test_all_zero_weight_is_exact():
    for bits in (8, 4):
        layer = QuantLinear.from_weight(torch.zeros(4, 32), bits)
        assert torch.equal(layer.dequantize(), torch.zeros(4, 32))


def test_pack_unpack_int4_round_trip():
    values = torch.arange(16, dtype=torch.uint8)
    packed = pack_int4(values)
    assert packed.shape == (8,) and packed.dtype == torch.uint8
    assert packed[0].item() == 0x10 and packed[-1].item() == 0xFE  # even index in the low nibble
    assert torch.equal(unpack_int4(packed, 16), values)
    pairs = torch.cartesian_prod(values, values)  # every (low, high) byte
    assert torch.equal(unpack_int4(pack_int4(pairs), 2), pairs)
    for shape in [(1,), (7,), (3, 5), (2, 3, 9), (5, 1)]:
        q = torch.randint(0, 16, shape, dtype=torch.uint8)
        packed = pack_int4(q)
        assert packed.shape[-1] == (shape[-1] + 1) // 2
        assert torch.equal(unpack_int4(packed, shape[-1]), q)


def test_quant_linear_forward_in_activation_dtype():
    torch.manual_seed(0)
    weight = torch.randn(48, 64)
    layer = QuantLinear.from_weight(weight, 4, 16)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T)
    layer = layer.to(torch.bfloat16)
    assert layer.scales.dtype == torch.float16  # not rounded to bf16 by the cast
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_quantize_model_replaces_linears_only(trained):
    model, inputs, _ = trained
    quantized = quantize_model(model, 8)
    quant = {name for name, m in quantized.named_modules() if isinstance(m, QuantLinear)}
    assert len(quant) == 7 * model.config.n_layers + 1 and "output" in quant
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    assert isinstance(model.output, torch.nn.Linear)  # the original is untouched
    assert model.output.weight is model.tok_embeddings.weight  # tied in the float model
    assert quantized.tok_embeddings.weight.dtype == torch.float32  # the embedding stays float
    kept = quantize_model(model, 4, include_output=False)
    assert isinstance(kept.output, torch.nn.Linear) and kept.output.weight is kept.tok_embeddings.weight
    assert 8 < weight_bits(quantized) < 8.5
    assert weight_bits(quantize_model(model, 4, 32)) == pytest.approx(4.75)


def test_quantized_logits_close_to_float(trained):
    model, inputs, targets = trained
    with torch.no_grad():
        logits, loss = model(inputs, targets)
        assert 0.5 < loss.item() < 2.5  # trained, but not memorized
        q8_logits, q8_loss = quantize_model(model, 8)(inputs, targets)
        q4_logits, q4_loss = quantize_model(model, 4, 32)(inputs, targets)
    assert (q8_logits - logits).abs().max() < 0.15 * logits.std()  # measured ~0.05 (std ~1.1)
    assert (q8_logits.argmax(-1) == logits.argmax(-1)).float().mean() > 0.95
    assert abs(q8_loss.item() / loss.item() - 1) < 0.005
    assert (q4_logits.argmax(-1) == logits.argmax(-1)).float().mean() > 0.9
    assert abs(q4_loss.item() / loss.item() - 1) < 0.05  # measured ~1%


def test_generation_with_kv_cache(trained):
    model, inputs, _ = trained
    prompts = [inputs[0, :5].tolist(), inputs[1, :3].tolist()]
    for bits in (8, 4):
        quantized = quantize_model(model, bits)
        new = generate(quantized, prompts, max_new_tokens=8, temperature=0)
        assert [len(row) for row in new] == [8, 8]
        # the cache gives what a full forward over the grown sequence gives
        with torch.no_grad():
            full, _ = quantized(torch.tensor([prompts[0] + new[0][:-1]]))
        assert full[0, len(prompts[0]) - 1:].argmax(-1).tolist() == new[0]


def _fp32_bytes(model: Llama) -> tuple[int, int]:
    """(bytes of the float32 weights of the linears quantize_model replaces, bytes of the rest)."""
    linear = sum(m.weight.numel() * 4 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    rest = model.tok_embeddings.weight.numel() * 4 + sum(p.numel() * 4 for p in model.parameters() if p.dim() == 1)
    return linear, rest


@pytest.mark.parametrize("bits,max_ratio", [(8, 0.3), (4, 0.18)])
def test_save_load_round_trip_and_size(trained, tmp_path, bits, max_ratio):
    model, inputs, _ = trained
    quantized = quantize_model(model, bits)
    path = save_quantized(quantized, tmp_path / f"int{bits}", {"step": 30, "source": "test"})
    assert sorted(os.listdir(path)) == ["meta.json", "model.safetensors"]
    assert not list(tmp_path.glob("*.tmp-*"))
    loaded, meta = load_quantized(path)
    assert meta["step"] == 30 and meta["quantization"]["bits"] == bits
    assert meta["quantization"]["group_size"] == (32 if bits == 4 else None)
    assert "output" in meta["quantization"]["layers"]
    with torch.no_grad():
        assert torch.equal(loaded(inputs)[0], quantized(inputs)[0])
    assert generate(loaded, [[1, 2, 3]], 6, temperature=0) == generate(quantized, [[1, 2, 3]], 6, temperature=0)
    # The file: the quantized linears at ~weight_bits / 32 of their float32 size, plus the float rest.
    linear, rest = _fp32_bytes(model)
    size = os.path.getsize(path / "model.safetensors")
    assert (size - rest) / linear < max_ratio  # int8 ~0.27, int4 ~0.16 with the safetensors header
    save_checkpoint(tmp_path / "fp32", model, None, {})
    assert size < os.path.getsize(tmp_path / "fp32" / "model.safetensors") * (0.45 if bits == 8 else 0.35)


def test_round_trip_with_float_output(trained, tmp_path):
    model, inputs, _ = trained
    quantized = quantize_model(model, 4, 16, include_output=False)
    loaded, _ = load_quantized(save_quantized(quantized, tmp_path / "q", {}))
    assert loaded.output.weight is loaded.tok_embeddings.weight  # still tied after loading
    with torch.no_grad():
        assert torch.equal(loaded(inputs)[0], quantized(inputs)[0])


def test_group_size_must_divide(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wq: in_features 64 is not divisible by group_size 48"):
        quantize_model(model, 4, group_size=48)
    with pytest.raises(ValueError, match="bits must be 8 or 4"):
        quantize_model(model, 3)
    with pytest.raises(ValueError, match="group_size"):
        quantize_model(model, 4, group_size=0)


def test_load_errors(trained, tmp_path):
    model, _, _ = trained
    save_checkpoint(tmp_path / "float", model, None, {"config": model.config.to_dict()})
    with pytest.raises(CheckpointError, match="not a quantized checkpoint"):
        load_quantized(tmp_path / "float")
    with pytest.raises(CheckpointError, match="no meta.json"):
        load_quantized(tmp_path / "missing")
    path = save_quantized(quantize_model(model, 8), tmp_path / "q", {})
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_quantized(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_quantized(path)
    # A meta.json that claims another group size than the tensors have.
    path = save_quantized(quantize_model(model, 4, 32), tmp_path / "q4", {})
    meta = (path / "meta.json").read_text().replace('"group_size": 32', '"group_size": 16')
    (path / "meta.json").write_text(meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_quantized(path)
