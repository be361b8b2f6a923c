"""Hugging Face export and import: a crawl2model checkpoint <-> a transformers LlamaForCausalLM folder.

    from model.hf import export_hf, import_hf, tokenizer_folder
    out = export_hf(checkpoint, Path("hf-model"))                   # dtype=torch.bfloat16 for half the size
    # transformers.AutoModelForCausalLM.from_pretrained("hf-model"), AutoTokenizer.from_pretrained("hf-model")
    ckpt = import_hf(Path("hf-model"), Path("checkpoints/imported/step-000000"))
    tokenizer_folder(ckpt)                                           # works for trained and imported checkpoints

    .venv/bin/python -c "from model.hf import export_hf; export_hf('CKPT', 'OUT')"   # by hand

The export folder holds config.json (LlamaForCausalLM), model.safetensors (HF tensor names via
model.llama.hf_name; tied embeddings store only model.embed_tokens.weight, as HF does),
generation_config.json (stops at <|endoftext|> and <|end_of_turn|>), and the tokenizer:
tokenizer.json as trained, tokenizer_config.json (chat template, eos/pad tokens) and
special_tokens_map.json. Our rotary layout is HF's, so the weights map one-to-one. The folder is
written under a temporary name and renamed (complete or absent).

Import reads such a folder (one model.safetensors or shards listed in model.safetensors.index.json),
refuses what our Llama cannot represent (another model_type, biases, rope scaling, a head_dim
other than hidden_size / heads), and saves a checkpoint whose meta.json is {"step": 0, "config",
"source": "hf", "hf_folder", "tokenizer"}; the tokenizer files are copied into the checkpoint's
`tokenizer/` folder and meta["tokenizer"] holds that path relative to the checkpoint.
A trained checkpoint finds its tokenizer through meta["train"]["manifest"] instead.
No transformers import: files are written and read with safetensors and json only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.llama import Llama, hf_name
from model.tokenizer import END_OF_TURN, EOT, write_hf_files

EOT_ID, END_OF_TURN_ID = 0, 4  # model.tokenizer.SPECIAL_TOKENS order: <|endoftext|> ... <|end_of_turn|>
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class HFExportError(ValueError):
    """A checkpoint or Hugging Face folder that cannot be exported or imported."""


def _meta(checkpoint: Path) -> dict:
    try:
        return json.loads((checkpoint / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{checkpoint} is not a checkpoint (no meta.json)") from None


def tokenizer_folder(checkpoint: Path) -> Path:
    """The folder holding the tokenizer.json a checkpoint was trained with (or imported with)."""
    checkpoint = Path(checkpoint)
    meta = _meta(checkpoint)
    if "tokenizer" in meta:  # imported: relative to the checkpoint (an absolute path also works)
        folder = checkpoint / meta["tokenizer"]
    elif "manifest" in meta.get("train", {}):
        manifest = Path(meta["train"]["manifest"])
        try:
            folder = Path(json.loads(manifest.read_text())["tokenizer"]).parent
        except FileNotFoundError:
            raise FileNotFoundError(f"{checkpoint} was trained on shards whose manifest {manifest} is gone, "
                                    "so its tokenizer cannot be found; pass the tokenizer folder explicitly") from None
        except KeyError:
            raise CheckpointError(f"the shard manifest {manifest} of {checkpoint} names no tokenizer") from None
    else:
        raise CheckpointError(f"{checkpoint}/meta.json names no tokenizer (neither 'tokenizer' nor train.manifest)")
    if not (folder / "tokenizer.json").exists():
        raise FileNotFoundError(f"the tokenizer of {checkpoint} should be at {folder / 'tokenizer.json'}, "
                                "which does not exist")
    return folder


def hf_config(config: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """config.json for transformers' LlamaForCausalLM. rope_theta appears both at the top level
    (transformers < 5, llama.cpp's converter) and in rope_parameters (transformers 5)."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.dim, "intermediate_size": config.ffn_dim,
        "num_hidden_layers": config.n_layers, "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads, "head_dim": config.head_dim,
        "max_position_embeddings": config.max_seq_len, "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None, "tie_word_embeddings": config.tie_embeddings, "initializer_range": config.init_std,
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "pretraining_tp": 1, "use_cache": True,
        # No BOS is prepended (the tokenizer adds no special tokens); <|endoftext|> precedes every
        # document but the first in training, so it is the natural BOS if a caller wants one.
        "bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID,
        "torch_dtype": dtype_name, "dtype": dtype_name,
    }


def generation_config() -> dict:
    """generation_config.json: stop at end of text or end of turn; model.sampling's defaults. No
    max_length (transformers warns whenever a caller passes max_new_tokens beside it)."""
    return {"bos_token_id": EOT_ID, "eos_token_id": [EOT_ID, END_OF_TURN_ID], "pad_token_id": EOT_ID,
            "do_sample": True, "temperature": 0.8, "top_k": 50}


def _write_tokenizer(source: Path, dest: Path, config: ModelConfig) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    if tokenizer.get_vocab_size() > config.vocab_size:
        raise HFExportError(f"the tokenizer at {source} has {tokenizer.get_vocab_size()} tokens, more than the "
                            f"model's vocab_size {config.vocab_size}: not the tokenizer this model was trained with")
    if (tokenizer.token_to_id(EOT), tokenizer.token_to_id(END_OF_TURN)) != (EOT_ID, END_OF_TURN_ID):
        raise HFExportError(f"the tokenizer at {source} is not a crawl2model tokenizer "
                            f"({EOT} should be id {EOT_ID} and {END_OF_TURN} id {END_OF_TURN_ID})")
    shutil.copyfile(source / "tokenizer.json", dest / "tokenizer.json")
    write_hf_files(dest, model_max_length=config.max_seq_len)


def _hf_tensors(model: Llama, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied output weight: HF stores only the embedding
            continue
        seen.add(tensor.data_ptr())
        tensors[hf_name(name)] = tensor.detach().to(dtype).contiguous()
    return tensors


def export_hf(checkpoint: Path, out: Path, dtype: torch.dtype = torch.float32, tokenizer: Path | None = None) -> Path:
    """Write the Hugging Face folder `out` for a checkpoint; tokenizer: its folder if not the checkpoint's."""
    checkpoint, out = Path(checkpoint), Path(out)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise HFExportError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise HFExportError(f"{out} exists and is not a Hugging Face model folder; refusing to replace it")
    meta = _meta(checkpoint)  # model.sampling.load_model's work; not imported, so sampling may import this module
    model = Llama(ModelConfig.from_dict(meta["config"]))
    load_checkpoint(checkpoint, model)
    source = Path(tokenizer) if tokenizer is not None else tokenizer_folder(checkpoint)
    if not (source / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {source}")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        config = model.config
        (tmp / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(), indent=1))
        save_file(_hf_tensors(model, dtype), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "crawl2model_step": str(meta.get("step", ""))})
        _write_tokenizer(source, tmp, config)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out


def model_config(hf: dict) -> ModelConfig:
    """A ModelConfig from an HF config.json, or HFExportError naming what our Llama lacks."""
    if hf.get("model_type") != "llama":
        raise HFExportError(f"model_type {hf.get('model_type')!r} is not supported: only 'llama' imports")
    unsupported = {"attention_bias": hf.get("attention_bias", False), "mlp_bias": hf.get("mlp_bias", False),
                   "rope_scaling": hf.get("rope_scaling")}
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        unsupported["rope_parameters.rope_type"] = rope["rope_type"]
    if hf.get("hidden_act", "silu") != "silu":
        unsupported["hidden_act"] = hf["hidden_act"]
    required = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    absent = [key for key in required if key not in hf]
    if absent:
        raise HFExportError(f"config.json lacks {absent}")
    heads = hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, hf["hidden_size"] // heads):
        unsupported["head_dim"] = hf["head_dim"]
    unsupported = {k: v for k, v in unsupported.items() if v not in (False, None)}
    if unsupported:
        raise HFExportError(f"unsupported Llama features: {unsupported} (crawl2model's Llama has no biases, "
                            "plain rotary, SiLU, head_dim = hidden_size / num_attention_heads)")
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], dim=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf["intermediate_size"],
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)))
    except ValueError as exc:
        raise HFExportError(f"config.json does not describe a model crawl2model can build: {exc}") from None


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists():
        files = [folder / "model.safetensors"]
    elif index.exists():
        files = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        raise HFExportError(f"{folder} has no model.safetensors nor model.safetensors.index.json "
                            "(pytorch_model.bin is not read: it is a pickle)")
    tensors = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors.update({key: f.get_tensor(key) for key in f.keys()})
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise HFExportError(f"{path} cannot be read: {exc}") from None
    return tensors


def import_hf(folder: Path, out: Path) -> Path:
    """Convert an HF Llama folder into the crawl2model checkpoint folder `out`."""
    folder, out = Path(folder), Path(out)
    try:
        hf = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise HFExportError(f"{folder} is not a Hugging Face model folder (no config.json)") from None
    except json.JSONDecodeError as exc:
        raise HFExportError(f"{folder}/config.json is not valid JSON: {exc}") from None
    config = model_config(hf)
    tensors = _read_tensors(folder)
    model = Llama(config)
    ours = {hf_name(key): key for key in model.state_dict()}
    if config.tie_embeddings:
        tied = tensors.pop("lm_head.weight", None)  # some exports store the tied copy too
        if tied is not None and not torch.equal(tied, tensors.get("model.embed_tokens.weight", tied)):
            raise HFExportError(f"{folder}: tie_word_embeddings is true but lm_head.weight differs from the embedding")
        del ours["lm_head.weight"]
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}  # old exports' buffers
    missing, unexpected = sorted(set(ours) - set(tensors)), sorted(set(tensors) - set(ours))
    if missing or unexpected:
        raise HFExportError(f"{folder} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    state = model.state_dict()
    for name, tensor in tensors.items():
        if tensor.shape != state[ours[name]].shape:
            raise HFExportError(f"{folder}: {name} has shape {tuple(tensor.shape)}, "
                                f"the config implies {tuple(state[ours[name]].shape)}")
    model.load_state_dict({ours[name]: tensor for name, tensor in tensors.items()}, strict=False)
    meta = {"step": 0, "config": config.to_dict(), "source": "hf", "hf_folder": str(folder.resolve())}
    has_tokenizer = (folder / "tokenizer.json").exists()
    if has_tokenizer:
        meta["tokenizer"] = "tokenizer"
    # Saved under a temporary name, the tokenizer copied in, then renamed: `out` is complete or absent.
    tmp = save_checkpoint(out.with_name(f"{out.name}.tmp-import-{os.getpid()}"), model, None, meta)
    if has_tokenizer:
        (tmp / "tokenizer").mkdir()
        for name in TOKENIZER_FILES:
            if (folder / name).exists():
                shutil.copyfile(folder / name, tmp / "tokenizer" / name)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    return out
