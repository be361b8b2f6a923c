"""Checkpoints: safetensors for every tensor (weights, optimizer state, RNG), JSON for the rest.

    from model.checkpoint import save_checkpoint, load_checkpoint, latest_checkpoint
    save_checkpoint(step_folder(folder, 100), model, optimizer, {"step": 100, "config": cfg.to_dict(), ...})
    path = latest_checkpoint(folder)                       # newest complete one, or None
    meta = load_checkpoint(path, model, optimizer, expect_config=cfg.to_dict())

A checkpoint is a folder: `model.safetensors` (the state_dict; a tied output weight is stored
once), `optimizer.safetensors` (each state tensor as `state.<param index>.<name>`, plus
`rng.torch` and `rng.cuda.<i>`), and `meta.json` (step, data position, config, param groups,
anything the trainer adds). It is written under a temporary name and renamed, so a folder
named `step-*` is always complete. Nothing is pickled. Loading a checkpoint of another model
config raises CheckpointError naming the fields that differ.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (incomplete, corrupt, or of another config)."""


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:  # tied weights: saved once (safetensors refuses shared storage)
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous().cpu()
    return tensors


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    scalars: dict[str, dict] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, meta: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_model_tensors(model), str(tmp / "model.safetensors"))
    meta = dict(meta)
    if optimizer is not None:
        tensors, optimizer_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = optimizer_meta
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(path, ignore_errors=True)
    os.rename(tmp, path)
    return path


def step_folder(run: Path, step: int) -> Path:
    """The checkpoint of `step` in a run's folder: step-NNNNNN (sorts by step)."""
    return Path(run) / f"step-{step:06d}"


def latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint with the highest step in `folder` (temporary folders ignored)."""
    found = [p for p in Path(folder).glob("step-*") if ".tmp-" not in p.name and (p / "meta.json").exists()]
    return max(found, key=lambda p: json.loads((p / "meta.json").read_text())["step"], default=None)


def config_differences(saved: dict, expected: dict) -> list[str]:
    keys = sorted(set(saved) | set(expected))
    return [f"{k}: checkpoint {saved.get(k)!r}, here {expected.get(k)!r}" for k in keys if saved.get(k) != expected.get(k)]


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    expect_config: dict | None = None) -> dict:
    """Load weights (and optimizer state and RNG when `optimizer` is given); returns meta.json."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a checkpoint (no meta.json)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/meta.json is corrupt: {exc}") from None
    if expect_config is not None and "config" in meta:
        differences = config_differences(meta["config"], expect_config)
        if differences:
            raise CheckpointError(f"{path} is a checkpoint of another model config: " + "; ".join(differences))
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
        raise CheckpointError(f"{path}/model.safetensors cannot be read: {exc}") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if _is_tied(model, name)}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path} does not fit this model: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    if optimizer is not None:
        tensors = load_file(str(path / "optimizer.safetensors"))
        saved = meta["optimizer"]
        state: dict[int, dict] = {}
        for key, tensor in tensors.items():
            if key.startswith("state."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = tensor
        for index, scalars in saved["scalars"].items():
            state.setdefault(int(index), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
    return meta


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    """Whether a state_dict entry shares storage with another (saved once under the other name)."""
    state = model.state_dict()
    return any(other != name and state[other].data_ptr() == state[name].data_ptr() for other in state)
