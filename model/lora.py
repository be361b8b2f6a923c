"""LoRA adapters on crawl2model's Llama through the `peft` library: add, switch off, merge, save.

    from model.lora import add_lora, adapters_disabled, merge_lora, lora_state_dict, load_lora_state_dict
    model = add_lora(model, rank=8, alpha=16)        # the same Llama object, adapters injected in place
    trainable, total = trainable_parameters(model)   # only lora_A / lora_B train
    with adapters_disabled(model):                   # the base model (a DPO reference, no weight copy)
        ref_logits, _ = model(tokens)
    save_file(lora_state_dict(model), "adapter.safetensors")     # adapters only, small
    load_lora_state_dict(add_lora(fresh_model, **lora_settings(model)), load_file("adapter.safetensors"))
    plain = merge_lora(model)   # W += (alpha / rank) * B @ A; a plain Llama with the original keys

`peft.inject_adapter_in_model` wraps each targeted nn.Linear (wq, wk, wv, wo, w1, w2, w3 by
default) in a peft LoRA layer and freezes everything else; the model stays a Llama whose
forward returns (logits, loss), so training, generation and DPO code need no change. The
state_dict of a model with adapters has peft's keys (`...wq.base_layer.weight`,
`...wq.lora_A.default.weight`): save it with `lora_state_dict`, or `merge_lora` first when the
checkpoint is for export (model.checkpoint, model.hf, model.to_gguf take the merged model).
B starts at zero, so right after add_lora the model computes exactly what the base model does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer

from model.settings import LORA_TARGETS

ADAPTER = "default"


def add_lora(model: torch.nn.Module, rank: int = 8, alpha: float = 16, dropout: float = 0.0,
             target_modules: Sequence[str] = LORA_TARGETS) -> torch.nn.Module:
    """Inject LoRA adapters (peft) into the named linear layers, in place; returns the model.
    Afterwards only the adapters' parameters require grad."""
    if _tuner_layers(model):
        raise ValueError("the model already has LoRA adapters (merge_lora them first)")
    if rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none")
    model = inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    if not _tuner_layers(model):
        raise ValueError(f"no module of the model matches target_modules {list(target_modules)}")
    return model


def lora_settings(model: torch.nn.Module) -> dict:
    """add_lora's keyword arguments that made this model's adapters (JSON-friendly, for meta.json)."""
    config = _peft_config(model)
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "target_modules": sorted(config.target_modules)}


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters that require grad, all parameters); a tied weight counts once."""
    params = list(model.parameters())  # deduplicated by nn.Module
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block the model computes as the base model (peft's enable_adapters(False) on
    every LoRA layer); on exit the adapters, and their requires_grad flags, are as before."""
    layers = _tuner_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA adapters to disable")
    states = [(layer, layer.disable_adapters) for layer in layers]
    grads = {param: param.requires_grad for layer in layers for param in layer.parameters()}
    try:
        for layer in layers:
            layer.enable_adapters(False)
        yield model
    finally:
        for layer, disabled in states:
            layer.enable_adapters(not disabled)
        for param, requires_grad in grads.items():
            param.requires_grad_(requires_grad)


def merge_lora(model: torch.nn.Module) -> torch.nn.Module:
    """Merge the adapters into the base weights (peft's merge, checked for NaN/inf) and put the
    plain nn.Linear layers back, in place: the returned model is the same Llama with its original
    state_dict keys, every parameter trainable again, ready for model.checkpoint and the exporters."""
    layers = {name: module for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}
    if not layers:
        raise ValueError("the model has no LoRA adapters to merge")
    for name, layer in layers.items():
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors only (peft's names without the adapter name, e.g.
    `layers.0.attention.wq.lora_A.weight`), contiguous CPU copies that safetensors can save."""
    return {key: value.detach().contiguous().cpu().clone()
            for key, value in get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}


def load_lora_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load lora_state_dict's tensors into a model with the same adapters (add_lora with the same
    lora_settings); raises ValueError when any adapter tensor is left unset or a key is unknown."""
    result = set_peft_model_state_dict(model, state_dict, adapter_name=ADAPTER)
    unexpected = list(result.unexpected_keys)
    expected = set(get_peft_model_state_dict(model, adapter_name=ADAPTER))
    missing = sorted(expected - set(state_dict))
    if unexpected or missing:
        raise ValueError(f"LoRA state_dict does not fit this model: missing {missing[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def _tuner_layers(model: torch.nn.Module) -> list[BaseTunerLayer]:
    return [module for module in model.modules() if isinstance(module, BaseTunerLayer)]


def _peft_config(model: torch.nn.Module) -> LoraConfig:
    config = getattr(model, "peft_config", {}).get(ADAPTER)
    if config is None:
        raise ValueError("the model has no LoRA adapters (add_lora first)")
    return config
