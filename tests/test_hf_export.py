"""Hugging Face export and import (model/hf.py): transformers loads the export and computes the same
logits and greedy tokens (tied, untied, GQA), its tokenizer gives the same ids and chat prompt,
export -> import is bitwise, sharded folders import, and bad inputs fail with a clear error.
Tiny models and a tokenizer trained here; CPU, a few seconds each.

    .venv/bin/python -m pytest -q tests/test_hf_export.py
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError, save_checkpoint
from model.config import ModelConfig
from model.generate import generate
from model.hf import HFExportError, export_hf, hf_config, import_hf, tokenizer_folder
from model.llama import Llama
from model.sampling import load_model
from model.tokenizer import EOT, load_tokenizer, render_chat, save_tokenizer
from tasks.bpe import train_tokenizer
from tests.conftest import SHARED_DATA

transformers = pytest.importorskip("transformers")

VOCAB = 400
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Lyon?"},
        {"role": "assistant", "content": "In France."}, {"role": "user", "content": "And Porto?"}]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only add overhead
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    articles = SHARED_DATA / "html" / "articles" / "ground-truth.json"
    if articles.exists():
        return [v["articleBody"] for v in json.loads(articles.read_text()).values()][:60]
    words = "the river city market bridge north old new built trade people of and in was is a 1890 café".split()
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(200)) + "." for i in range(60)]


@pytest.fixture(scope="module")
def tokenizer_dir(texts, tmp_path_factory):
    return save_tokenizer(train_tokenizer([texts], vocab_size=VOCAB), tmp_path_factory.mktemp("tok") / "tokenizer")


def make_checkpoint(folder, tokenizer_dir, seed=0, **overrides):
    """A trained-looking checkpoint: meta.train.manifest -> a manifest naming the tokenizer."""
    torch.manual_seed(seed)
    model = Llama(ModelConfig.from_preset("tiny", vocab_size=VOCAB, **overrides))
    with torch.no_grad():  # larger weights than init: clear argmaxes, no near-ties in greedy decoding
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    manifest = folder / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"tokenizer": str(tokenizer_dir / "tokenizer.json")}))
    meta = {"step": 7, "config": model.config.to_dict(), "train": {"manifest": str(manifest)}}
    return save_checkpoint(folder / "step-000007", model, None, meta)


SHAPES = {"tied": dict(tie_embeddings=True, n_kv_heads=4), "untied": dict(tie_embeddings=False, n_kv_heads=4),
          "gqa": dict(n_kv_heads=2), "mqa-untied": dict(n_kv_heads=1, tie_embeddings=False)}


@pytest.mark.parametrize("shape", SHAPES)
def test_transformers_computes_the_same_logits_and_greedy_tokens(shape, tokenizer_dir, texts, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_dir, **SHAPES[shape])
    out = export_hf(ckpt, tmp_path / "hf")
    ours, _ = load_model(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.dtype == torch.float32 and hf.config.tie_word_embeddings == ours.config.tie_embeddings
    saved = load_file(str(out / "model.safetensors"))
    assert ("lm_head.weight" in saved) != ours.config.tie_embeddings  # tied: stored once, as HF does

    tokenizer = load_tokenizer(tokenizer_dir)
    ids = torch.tensor([tokenizer.encode(texts[0]).ids[:100], tokenizer.encode(texts[1]).ids[:100]])
    with torch.no_grad():
        diff = (hf(ids).logits - ours(ids)[0]).abs().max().item()
    assert diff <= 1e-4

    prompt = ids[0, :12]
    [mine] = generate(ours, [prompt.tolist()], max_new_tokens=10, temperature=0)
    new = hf.generate(prompt[None], attention_mask=torch.ones_like(prompt[None]), max_new_tokens=10,
                      do_sample=False)[0, len(prompt):].tolist()
    # transformers stops at <|endoftext|> or <|end_of_turn|> (generation_config); ours ran on.
    assert new and new == mine[:len(new)] and (len(new) == 10 or new[-1] in (0, 4))


def test_the_exported_tokenizer_and_configs(tokenizer_dir, texts, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_dir)
    out = export_hf(ckpt, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer = load_tokenizer(tokenizer_dir)
    for text in texts[:20] + ["naïve café — 東京 🙂\t\r\n x", "  two  spaces\n\n"]:
        assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text).ids
        assert hf_tok(text).input_ids == tokenizer.encode(text).ids  # no BOS/EOS added
    for prompt in (True, False):
        assert hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt) == render_chat(CHAT, prompt)
    assert (hf_tok.eos_token, hf_tok.eos_token_id, hf_tok.pad_token_id) == (EOT, 0, 0)
    assert hf_tok.model_max_length == 128  # the model's max_seq_len, not the tokenizer's default

    config = json.loads((out / "config.json").read_text())
    assert config == hf_config(ModelConfig.from_dict(json.loads((ckpt / "meta.json").read_text())["config"]))
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [0, 4] and generation.pad_token_id == 0
    assert not list(tmp_path.glob("hf.tmp-*"))


@pytest.mark.parametrize("tie", [True, False])
def test_export_then_import_is_bitwise(tie, tokenizer_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_dir, tie_embeddings=tie)
    back = import_hf(export_hf(ckpt, tmp_path / "hf"), tmp_path / "imported" / "step-000000")
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((back / "meta.json").read_text())
    assert meta["config"] == json.loads((ckpt / "meta.json").read_text())["config"]
    assert (meta["step"], meta["source"]) == (0, "hf")
    assert (tokenizer_folder(back) / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    # ...and the imported checkpoint exports again, to the same tensors
    again = export_hf(back, tmp_path / "hf2")
    first, second = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert all(torch.equal(first[k], second[k]) for k in first) and first.keys() == second.keys()


def test_bf16_export_and_sharded_import(tokenizer_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_dir, tie_embeddings=False)
    out = export_hf(ckpt, tmp_path / "hf", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    tensors = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    # Split into two shards with an index, as transformers' save_pretrained does for large models.
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(out / file), metadata={"format": "pt"})
    (out / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    back = import_hf(out, tmp_path / "imported")
    before, after = load_file(str(ckpt / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert all(torch.equal(before[k].bfloat16().float(), after[k]) for k in before)  # fp32, bf16-rounded


def test_clear_errors(tokenizer_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", tokenizer_dir)
    out = export_hf(ckpt, tmp_path / "hf")
    with pytest.raises(HFExportError, match="no config.json"):
        import_hf(tmp_path / "ckpt", tmp_path / "x")

    config = json.loads((out / "config.json").read_text())
    for change, message in [({"model_type": "gpt2"}, "model_type 'gpt2'"), ({"attention_bias": True}, "attention_bias"),
                            ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
                            ({"head_dim": 32}, "head_dim")]:
        (out / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(HFExportError, match=message):
            import_hf(out, tmp_path / "x")
    (out / "config.json").write_text(json.dumps(config))

    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(HFExportError, match="model.safetensors cannot be read"):
        import_hf(out, tmp_path / "x")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob("x.tmp-*"))

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(HFExportError, match="refusing to replace"):
        export_hf(ckpt, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()

    manifest = tmp_path / "ckpt" / "manifest.json"
    manifest.unlink()
    with pytest.raises(FileNotFoundError, match="manifest"):
        tokenizer_folder(ckpt)
    with pytest.raises(CheckpointError, match="no meta.json"):
        tokenizer_folder(tmp_path)
