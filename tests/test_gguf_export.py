"""GGUF export (model.to_gguf), llama.cpp running it (model.llamacpp) and the Ollama Modelfile
(model.ollama). A tokenizer trained here on the real articles in ../shared/data and small
random models (dim 256 so k-quant blocks fit; dim 48 to force the F16 fallback). Tests that
run llama.cpp skip when llama-cpp-python (the `gguf` extra) is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.llama import Llama
from model.ollama import TEMPLATE, modelfile, render_ollama_template, write_modelfile
from model.sampling import load_model
from model.to_gguf import FALLBACK_KEY, GGUF_TYPES, GGUFError, export_gguf, permute_rotary, read_gguf_summary
from model.tokenizer import SPECIAL_TOKENS, plain_text_encoder, render_chat, save_tokenizer
from tasks.bpe import train_tokenizer
from tests.conftest import shared

ODD = ["naïve café — 東京の天気は晴れ 🙂🚀 \t\r\n x", "  two  spaces\n\n\n   end",
       "Привет, мир! Ελληνικά 123456789", "<|endoftext|> stays text <|end_of_turn|>", "don't I'LL we've 'S",
       "\u200b\ufeffzero width", "e\u0301 العربية"]
LAYER_TENSORS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Real text in several languages: the articles, a German page, a Latin-1 French page."""
    articles = json.loads(shared("html", "articles", "ground-truth.json").read_text())
    pages = [shared("html", "bad", "german.html").read_text(encoding="utf-8"),
             shared("html", "bad", "latin1-no-charset.html").read_bytes().decode("latin-1")]
    return [v["articleBody"] for v in articles.values()] + pages


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer([texts[i:i + 10] for i in range(0, len(texts), 10)], vocab_size=1024)


@pytest.fixture(scope="module")
def tokenizer_file(tokenizer, tmp_path_factory):
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer") / "tokenizer.json"


def make_checkpoint(folder, tokenizer_file, seed=0, **shape):
    """A checkpoint folder like the trainer's: meta config, and train.manifest -> the tokenizer."""
    torch.manual_seed(seed)
    vocab = json.loads(tokenizer_file.read_text())["model"]["vocab"]
    model = Llama(ModelConfig(vocab_size=len(vocab), max_seq_len=128, **shape))
    with torch.no_grad():  # larger than the init so logits are far from uniform (no argmax near-ties)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"tokenizer": str(tokenizer_file)}))
    meta = {"step": 1, "config": model.config.to_dict(), "train": {"manifest": str(folder / "manifest.json")}}
    return save_checkpoint(folder / "step-000001", model, None, meta)


@pytest.fixture(scope="module")
def checkpoint(tokenizer_file, tmp_path_factory):
    # GQA (2 kv heads) so attn_k's permutation uses n_kv_heads; rows of 256/512: k-quant blocks fit.
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", tokenizer_file,
                           dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=512)


@pytest.fixture(scope="module")
def export(checkpoint, tmp_path_factory):
    folder, done = tmp_path_factory.mktemp("gguf"), {}

    def get(quant: str):
        if quant not in done:
            done[quant] = export_gguf(checkpoint, folder / f"model-{quant}.gguf", quant)
        return done[quant]
    return get


@pytest.fixture(scope="module")
def sample_ids(texts, tokenizer):
    return plain_text_encoder(tokenizer).encode(texts[0]).ids[:100]


def torch_logits(checkpoint, ids) -> np.ndarray:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0].numpy()


def torch_loss(checkpoint, ids) -> float:
    model, _ = load_model(checkpoint)
    with torch.no_grad():
        return model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))[1].item()


def test_f16_file_has_the_llama_layout_and_the_tokenizer(export, checkpoint, tokenizer):
    from gguf import GGMLQuantizationType, GGUFReader, TokenType
    from gguf.quants import dequantize

    reader = GGUFReader(str(export("f16")))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    tensors = {t.name: t for t in reader.tensors}
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{n}.weight" for i in range(2) for n in LAYER_TENSORS}
    assert set(tensors) == expected  # tied embeddings: no output.weight, llama.cpp reuses token_embd
    vocab = tokenizer.get_vocab_size()
    assert list(tensors["token_embd.weight"].shape) == [256, vocab]  # GGUF lists dims innermost first
    assert list(tensors["blk.0.attn_k.weight"].shape) == [256, 128]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [512, 256]
    for name, t in tensors.items():
        assert t.tensor_type == (GGMLQuantizationType.F32 if "norm" in name else GGMLQuantizationType.F16), name
    assert field("general.architecture") == "llama" and field("general.file_type") == 1
    assert [field(f"llama.{k}") for k in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                                          "attention.head_count", "attention.head_count_kv", "rope.dimension_count",
                                          "vocab_size")] == [128, 256, 2, 512, 4, 2, 64, vocab]
    assert field("llama.rope.freq_base") == 10000.0
    assert field("llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "smaug-bpe")
    tokens = field("tokenizer.ggml.tokens")
    assert tokens == [tokenizer.id_to_token(i) for i in range(vocab)]
    types = field("tokenizer.ggml.token_type")
    assert types[:5] == [TokenType.CONTROL] * 5 and set(types[5:]) == {TokenType.NORMAL}
    assert tokens[:5] == list(SPECIAL_TOKENS)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    assert field("tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert [field(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "eot_token_id", "padding_token_id",
                                                    "add_bos_token", "add_eos_token")] == [0, 0, 4, 0, False, False]
    assert "<|end_of_turn|>" in field("tokenizer.chat_template")
    # attn_q / attn_k rows are permuted into llama.cpp's interleaved rotary layout, nothing else is
    model, _ = load_model(checkpoint)
    attention = model.layers[1].attention
    stored = lambda name: dequantize(tensors[name].data, tensors[name].tensor_type)  # noqa: E731
    as_f16 = lambda linear: linear.weight.detach().half().float().numpy()  # noqa: E731
    np.testing.assert_array_equal(stored("blk.1.attn_q.weight"), permute_rotary(as_f16(attention.wq), 4))
    np.testing.assert_array_equal(stored("blk.1.attn_k.weight"), permute_rotary(as_f16(attention.wk), 2))
    np.testing.assert_array_equal(stored("blk.1.attn_v.weight"), as_f16(attention.wv))


@pytest.mark.parametrize("quant", GGUF_TYPES)
def test_every_python_type_is_written_as_asked(export, quant):
    summary = read_gguf_summary(export(quant))
    assert summary["arch"] == "llama" and summary["n_tokens"] == summary["metadata"]["llama.vocab_size"]
    types = {name: t["type"] for name, t in summary["tensors"].items()}
    assert {t for n, t in types.items() if "norm" in n} == {"F32"}
    assert {t for n, t in types.items() if "norm" not in n} == {quant.upper()}
    assert FALLBACK_KEY not in summary["metadata"]


def test_rows_that_do_not_fit_the_block_fall_back_to_f16(tokenizer_file, tmp_path):
    ckpt = make_checkpoint(tmp_path / "odd", tokenizer_file, dim=48, n_layers=1, n_heads=4, n_kv_heads=4)
    summary = read_gguf_summary(export_gguf(ckpt, tmp_path / "odd-q8_0.gguf", "q8_0"))
    types = {name: t["type"] for name, t in summary["tensors"].items()}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["blk.0.ffn_up.weight"] == "F16"
    assert types["blk.0.ffn_down.weight"] == "Q8_0"  # rows of 128 = 4 blocks of 32; the others have rows of 48
    assert sorted(summary["metadata"][FALLBACK_KEY]) == sorted(f"{n}:F16" for n, t in types.items() if t == "F16")


def test_damaged_or_foreign_files_raise_gguf_error(export, tmp_path):
    data = export("q8_0").read_bytes()
    cases = {"truncated.gguf": data[:len(data) // 2], "header-cut.gguf": data[:200], "empty.gguf": b"",
             "bad-magic.gguf": b"GGML" + data[4:], "text.gguf": b"not a gguf file\n" * 100}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(GGUFError, match="not a readable GGUF file"):
            read_gguf_summary(tmp_path / name)


def test_unknown_type_and_missing_llama_cpp_are_clear_errors(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(GGUFError, match="unknown GGUF type 'q3_x'"):
        export_gguf(checkpoint, tmp_path / "x.gguf", "q3_x")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if not installed
    with pytest.raises(GGUFError, match=r"crawl2model\[gguf\]"):
        export_gguf(checkpoint, tmp_path / "k.gguf", "q4_k_m")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_modelfile_template_renders_like_render_chat(export):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!\n  Who are you?"},
            {"role": "assistant", "content": " I am a model. "}, {"role": "user", "content": "Tell me <more>."}]
    assert render_ollama_template(chat) == render_chat(chat, add_generation_prompt=True)
    # the evaluator reads the template's text: change the text, the rendering changes with it
    assert render_ollama_template(chat, template=TEMPLATE.replace("<|user|>", "USER:")).count("USER:") == 2
    with pytest.raises(ValueError, match="unsupported"):
        render_ollama_template(chat, template="{{ range .Messages }}{{ .Content | upper }}{{ end }}")
    text = modelfile("model-f16.gguf", {"temperature": 0.5})
    assert text.startswith("FROM ./model-f16.gguf\n") and f'TEMPLATE """{TEMPLATE}"""' in text
    assert 'PARAMETER stop "<|end_of_turn|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "PARAMETER temperature 0.5" in text and "PARAMETER top_k 50" in text
    path = write_modelfile(export("f16"))
    assert path == export("f16").with_name("model-f16.Modelfile")
    assert "PARAMETER num_ctx 128" in path.read_text()  # the model's trained context


# --- llama.cpp -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llamacpp():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed: make test LLAMACPP_TEST=1 (or pip install 'crawl2model[gguf]')")
    from model import llamacpp

    return llamacpp


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_real_text_like_our_tokenizer(llamacpp, export, tokenizer, texts):
    encoder = plain_text_encoder(tokenizer)  # the training stream's encoder: special-token text stays text
    path = export("f16")
    for text in texts + ODD:
        assert llamacpp.tokenize(path, text) == encoder.encode(text).ids, text[:80]


@pytest.mark.llamacpp
def test_f32_and_f16_logits_match_crawl2model(llamacpp, export, checkpoint, sample_ids):
    expected = torch_logits(checkpoint, sample_ids)
    # F32 weights with an F32 KV cache: only float summation order differs (measured 6e-6).
    np.testing.assert_allclose(llamacpp.next_token_logits(export("f32"), sample_ids, f32_cache=True), expected,
                               atol=1e-4, rtol=0)
    # F16 weights, llama.cpp's default F16 KV cache, activations rounded to F16 in the matmuls:
    # measured 5e-3 on logits up to ~4 (std 0.9); the bound is 0.02.
    got = llamacpp.next_token_logits(export("f16"), sample_ids)
    np.testing.assert_allclose(got, expected, atol=0.02, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.95


# |llama.cpp loss on each export - crawl2model's fp32 loss| on 100 tokens of the random model
# (measured: f32/f16/bf16 < 1e-4, q8_0 5e-4, q5_* 8e-3, q4_0 0.044, q4_1 0.039, q4_k_m 0.019).
LOSS_TOLERANCE = {"f32": 1e-3, "f16": 5e-3, "bf16": 0.01, "q8_0": 0.01, "q5_0": 0.03, "q5_1": 0.03,
                  "q4_0": 0.1, "q4_1": 0.1, "q4_k_m": 0.1}


@pytest.mark.parametrize("quant", list(GGUF_TYPES) + ["q4_k_m"])
@pytest.mark.llamacpp
def test_llama_cpp_runs_every_type(llamacpp, export, checkpoint, sample_ids, quant):
    path = export(quant)
    loss = llamacpp.val_loss(path, [sample_ids])
    assert abs(loss - torch_loss(checkpoint, sample_ids)) < LOSS_TOLERANCE[quant]
    assert llamacpp.perplexity(path, [sample_ids]) == pytest.approx(np.exp(loss))
    if quant == "q4_k_m":
        types = {t["type"] for t in read_gguf_summary(path)["tensors"].values()}
        assert "Q4_K" in types and read_gguf_summary(path)["metadata"]["general.file_type"] == 15


@pytest.mark.llamacpp
def test_generation_speed_is_measured(llamacpp, export, sample_ids):
    assert llamacpp.generation_speed(export("q8_0"), sample_ids[:8], 16, n_threads=1) > 0


def test_config_accepts_exactly_the_types_export_writes():
    from typing import get_args

    from crawl2model.config import GGUFType
    from model.to_gguf import K_QUANTS

    assert set(get_args(GGUFType)) == set(GGUF_TYPES) | set(K_QUANTS)
