"""The Llama decoder, its KV cache and generation (model/): causality, cache == recomputation,
batched == alone, overfitting one batch, GQA, tied embeddings, config errors, the Hugging Face
name mapping (and, when transformers is installed, identical logits in LlamaForCausalLM), and
sampling modes. Tiny preset, CPU, a few seconds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from model.config import PRESETS, ModelConfig
from model.generate import filter_logits, generate
from model.llama import KVCache, Llama, gguf_name, hf_name

VOCAB = 97


def tiny_model(seed: int = 0, **overrides) -> Llama:
    torch.manual_seed(seed)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=VOCAB, **overrides))
    # Random init gives near-uniform logits; larger weights make the argmax meaningful (no near-ties).
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: intra-op threads only add overhead, and on a busy 2-core machine
    # spinning threads make the tests ~20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Llama:
    return tiny_model()


def greedy_by_recomputation(model: Llama, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([tokens]))
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_causality(model):
    torch.manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        base, _ = model(tokens)
        for t in (0, 17, 38):
            changed = tokens.clone()
            changed[:, t + 1] = (changed[:, t + 1] + 1) % VOCAB
            logits, _ = model(changed)
            torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(logits[:, t + 1], base[:, t + 1])


def test_incremental_logits_match_full_forward(model):
    torch.manual_seed(2)
    tokens = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        full, _ = model(tokens)
        cache = KVCache(model.config, batch_size=2, max_seq_len=64)
        prefill, _ = model(tokens[:, :12], kv_cache=cache, start_pos=0)  # several tokens at once
        steps = [model(tokens[:, t : t + 1], kv_cache=cache, start_pos=t)[0] for t in range(12, 30)]
    incremental = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


def test_cached_greedy_equals_recomputation(model):
    prompt = [3, 14, 15, 92, 65]
    assert generate(model, [prompt], 25, temperature=0) == [greedy_by_recomputation(model, prompt, 25)]


def test_batched_prompts_of_different_lengths_equal_each_alone(model):
    prompts = [[5], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42, 7, 7]]
    alone = [generate(model, [p], 15, temperature=0)[0] for p in prompts]
    assert generate(model, prompts, 15, temperature=0) == alone
    assert alone[1] == greedy_by_recomputation(model, prompts[1], 15)


def test_eos_stops_a_row_and_is_included(model):
    free = generate(model, [[1, 2, 3], [4, 5]], 12, temperature=0)
    eos = free[0][4]
    stopped = generate(model, [[1, 2, 3], [4, 5]], 12, temperature=0, eos_id=eos)
    assert stopped[0] == free[0][: free[0].index(eos) + 1]
    assert stopped[1] == (free[1][: free[1].index(eos) + 1] if eos in free[1] else free[1])


def test_sampling_modes():
    model = tiny_model(seed=3)
    prompts = [[1, 2, 3], [9]]
    greedy = generate(model, prompts, 10, temperature=0)
    assert generate(model, prompts, 10, temperature=1.0, top_k=1, seed=0) == greedy
    assert generate(model, prompts, 10, temperature=0.7, top_p=1e-6, seed=0) == greedy  # nucleus of one
    first = generate(model, prompts, 20, temperature=1.5, top_k=50, top_p=0.95, seed=123)
    assert generate(model, prompts, 20, temperature=1.5, top_k=50, top_p=0.95, seed=123) == first
    others = [generate(model, prompts, 10, temperature=1.5, seed=s) for s in range(3)]
    assert len({json.dumps(o) for o in others}) > 1  # the seed matters
    assert model.training is False


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.8)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]


def test_overfits_one_batch():
    torch.manual_seed(4)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=VOCAB))
    tokens = torch.randint(0, VOCAB, (4, 33))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    _, first = model(inputs, targets)
    assert abs(first.item() - math.log(VOCAB)) < 0.3
    for _ in range(200):  # it takes ~50 steps; stop there to keep the test fast
        _, loss = model(inputs, targets)
        if loss.item() < 0.1:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_ignore_index_and_float32_logits():
    model = tiny_model()
    tokens = torch.randint(0, VOCAB, (2, 8))
    targets = tokens.clone()
    targets[:, 4:] = -100
    logits, loss = model(tokens, targets)
    _, loss_first_half = model(tokens[:, :4], targets[:, :4])
    torch.testing.assert_close(loss, loss_first_half)
    bf16_logits, _ = tiny_model().to(torch.bfloat16)(tokens)
    assert logits.dtype == bf16_logits.dtype == torch.float32


def test_rotary_tables_stay_float32_after_cast():
    model = tiny_model().to(torch.bfloat16)
    assert model.rotary.cos.dtype == torch.float32
    torch.testing.assert_close(model.rotary.cos, tiny_model().rotary.cos)


def test_grouped_query_attention_has_fewer_kv_params():
    gqa, full = tiny_model(n_kv_heads=1), tiny_model(n_kv_heads=4)
    assert gqa.layers[0].attention.wk.weight.shape == (16, 64)  # 1 kv head x head_dim 16
    assert gqa.layers[0].attention.wv.weight.numel() * 4 == full.layers[0].attention.wv.weight.numel()
    assert sum(p.numel() for p in gqa.parameters()) < sum(p.numel() for p in full.parameters())
    logits, _ = gqa(torch.randint(0, VOCAB, (2, 10)))
    assert torch.isfinite(logits).all()
    prompt = [8, 6, 7]
    assert generate(gqa, [prompt], 10, temperature=0) == [greedy_by_recomputation(gqa, prompt, 10)]


@pytest.mark.parametrize("tie", [True, False])
def test_tied_embeddings_share_storage(tie):
    model = tiny_model(tie_embeddings=tie)
    shared = model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    assert shared is tie
    counted = sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once
    assert counted == model.config.num_params()
    assert counted - model.config.num_params(include_embeddings=False) == VOCAB * 64 * (1 if tie else 2)


def test_init_scales_residual_projections():
    torch.manual_seed(5)
    model = Llama(ModelConfig.from_preset("small", vocab_size=512, n_layers=8))
    std = model.config.init_std
    assert model.layers[0].attention.wq.weight.std().item() == pytest.approx(std, rel=0.02)
    assert model.layers[0].feed_forward.w2.weight.std().item() == pytest.approx(std / 4, rel=0.02)
    assert torch.equal(model.layers[0].ffn_norm.weight, torch.ones(256))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="dim 100 is not divisible by n_heads 3"):
        ModelConfig(vocab_size=10, dim=100, n_layers=1, n_heads=3, n_kv_heads=1)
    with pytest.raises(ValueError, match="n_heads 4 is not divisible by n_kv_heads 3"):
        ModelConfig(vocab_size=10, dim=64, n_layers=1, n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim 3 .* must be even"):
        ModelConfig(vocab_size=10, dim=12, n_layers=1, n_heads=4, n_kv_heads=4)
    with pytest.raises(ValueError, match=r"unknown model preset 'huge'; known presets: tiny, small, 124m, 350m"):
        ModelConfig.from_preset("huge", vocab_size=10)


def test_config_defaults_round_trip_and_counts():
    cfg = ModelConfig.from_preset("124m", vocab_size=50257)
    assert cfg.ffn_dim == 2048 and ModelConfig.from_preset("small", 8192).ffn_dim == 704  # 682 -> 704
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert 123e6 < cfg.num_params() < 125e6  # GPT-2 small's size
    n = cfg.num_params(include_embeddings=False) + 768 * 50257
    assert cfg.flops_per_token(1024) == 6 * n + 12 * 12 * 768 * 1024
    assert set(PRESETS) == {"tiny", "small", "124m", "350m"}


def test_state_dict_maps_one_to_one_to_hf_and_gguf_names():
    for tie in (True, False):
        keys = list(tiny_model(tie_embeddings=tie).state_dict())
        for rename in (hf_name, gguf_name):
            assert len({rename(k) for k in keys}) == len(keys)
    assert hf_name("layers.1.attention.wq.weight") == "model.layers.1.self_attn.q_proj.weight"
    assert hf_name("layers.0.feed_forward.w1.weight") == "model.layers.0.mlp.gate_proj.weight"
    assert gguf_name("layers.1.feed_forward.w2.weight") == "blk.1.ffn_down.weight"
    with pytest.raises(KeyError):
        hf_name("layers.0.attention.bias")


@pytest.mark.parametrize("tie", [True, False])
def test_weights_load_into_transformers_llama_unchanged(tie):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(tie_embeddings=tie)
    cfg = model.config
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.ffn_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=tie)).eval()
    missing, unexpected = hf.load_state_dict({hf_name(k): v for k, v in model.state_dict().items()}, strict=False)
    assert missing == [] and unexpected == []
    tokens = torch.randint(0, VOCAB, (2, 50))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0], hf(tokens).logits, atol=1e-5, rtol=0)
