"""Direct Preference Optimization, the loss side: completion log-probs, the DPO/IPO loss with
TRL's metric names, reference log-probs computed once, and the collator for preference pairs.

    from model.dpo import collate_pairs, dpo_batch_loss, precompute_reference
    batch = collate_pairs([{"prompt_ids": [..], "chosen_ids": [..], "rejected_ids": [..]}, ...])
    refs = precompute_reference(reference_model, [batch])          # [(ref_chosen, ref_rejected)]
    loss, metrics = dpo_batch_loss(policy, batch, *refs[0], beta=0.1)
    loss.backward()                     # metrics: {"rewards/chosen": .., "rewards/accuracies": .., ...}

A batch holds the chosen rows first, then the rejected rows (2B rows, one forward pass), each
prompt + completion right-padded with pad_id; `completion_mask` (2B, T-1) marks which targets
(positions 1..T-1 of input_ids) are completion tokens, so the prompt and the padding never count.
With LoRA (model.lora) the reference is the same model inside `adapters_disabled(model)`, so no
second copy of the weights is needed.

The loss follows the DPO paper (Rafailov et al. 2023, eq. 7) and TRL's DPOTrainer.dpo_loss, see
`dpo_loss`. TRL scores IPO with length-averaged log-probs (its get_batch_logps is called with
average_log_prob=loss_type == "ipo"): for the same, pass average=True both to
precompute_reference and to dpo_batch_loss (the two must always agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

from model.settings import LOSS_TYPES



def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                   average: bool = False) -> torch.Tensor:
    """Sum (or, with average, mean) of log p(token) over the completion tokens of each row.

    input_ids (N, T) int64, prompt + completion right-padded; completion_mask (N, T-1), nonzero
    where target input_ids[:, t+1] is a completion token. One forward pass; log-probs in float32
    as gathered logit - logsumexp, so no (N, T, vocab) log-softmax tensor is kept besides the logits."""
    if completion_mask.shape != (input_ids.shape[0], input_ids.shape[1] - 1):
        raise ValueError(f"completion_mask must be (N, T-1) = {(input_ids.shape[0], input_ids.shape[1] - 1)}, "
                         f"got {tuple(completion_mask.shape)}")
    mask = completion_mask.to(input_ids.device).bool()
    logits, _ = model(input_ids[:, :-1])  # position t predicts token t+1; the last position predicts nothing
    # No target before the first completion token counts: skip those positions' logsumexp.
    first = int(mask.any(0).float().argmax()) if mask.any() else mask.shape[1]
    logits, targets, mask = logits[:, first:].float(), input_ids[:, first + 1:], mask[:, first:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO (or IPO) loss over the batch and TRL's batch-mean metrics (python floats).

    With h = (pc - rc) - (pr - rr), the log-ratio margin (TRL's `logits`), as in TRL's
    trl/trainer/dpo_trainer.py DPOTrainer.dpo_loss:
        sigmoid: -(1 - ls) * logsigmoid(beta * h) - ls * logsigmoid(-beta * h)
                 (ls = label_smoothing: conservative DPO, Mitchell's cDPO note eq. 3; ls = 0 is the
                 DPO paper's eq. 7)
        ipo:     (h - 1 / (2 * beta)) ** 2   (IPO paper arXiv:2310.12036 eq. 17, beta as its tau)
    Rewards: chosen = beta * (pc - rc), rejected = beta * (pr - rr); accuracy counts
    chosen > rejected, so a tie is not accurate (TRL)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; known: {', '.join(LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {loss_type!r}")
    # at least float32 (bf16 log-prob differences lose too much); float64 stays float64
    pc, pr, rc, rr = (t.to(torch.promote_types(t.dtype, torch.float32))
                      for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    margin = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * margin)
                  - label_smoothing * F.logsigmoid(-beta * margin))
    else:
        losses = (margin - 1 / (2 * beta)) ** 2
    chosen_rewards = beta * (pc - rc).detach()
    rejected_rewards = beta * (pr - rr).detach()
    metrics = {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "logps/chosen": pc.detach().mean().item(),
        "logps/rejected": pr.detach().mean().item(),
    }
    return losses.mean(), metrics


def pair_logps(model: torch.nn.Module, batch: dict, average: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) completion log-probs of a collate_pairs batch, in one forward pass."""
    logps = sequence_logps(model, batch["input_ids"], batch["completion_mask"], average=average)
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def dpo_batch_loss(model: torch.nn.Module, batch: dict, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
                   beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                   average: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """The policy's log-probs of a batch (summed, or averaged over completion tokens: TRL's IPO)
    and their dpo_loss; the reference log-probs must have been computed with the same `average`."""
    chosen, rejected = pair_logps(model, batch, average=average)
    return dpo_loss(chosen, rejected, ref_chosen.to(chosen.device), ref_rejected.to(chosen.device),
                    beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)


@torch.no_grad()
def precompute_reference(model: torch.nn.Module, batches: Iterable[dict],
                         average: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ref_chosen, ref_rejected) of each batch, once, without gradients and in eval mode (no
    dropout); the model's train/eval mode is restored afterwards. For a LoRA policy call it
    inside `model.lora.adapters_disabled(model)`."""
    was_training = model.training
    model.eval()
    try:
        return [tuple(t.detach() for t in pair_logps(model, batch, average=average)) for batch in batches]
    finally:
        model.train(was_training)


def collate_pairs(pairs: Sequence[dict], pad_id: int = 0, max_len: int | None = None) -> dict[str, torch.Tensor]:
    """Encoded pairs {"prompt_ids", "chosen_ids", "rejected_ids"} (lists of token ids) -> a batch:

        input_ids        (2B, T) int64: B chosen rows (prompt + chosen), then B rejected rows,
                         right-padded with pad_id (causal attention: padding after a row's end
                         changes none of its log-probs)
        completion_mask  (2B, T-1) bool: targets that are completion tokens

    max_len cuts sequences to that many tokens from the end of the completion (the prompt is
    kept whole); a pair left without a completion token raises ValueError."""
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    rows, starts = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for index, pair in enumerate(pairs):
            prompt, completion = list(pair["prompt_ids"]), list(pair[key])
            sequence = (prompt + completion)[:max_len] if max_len else prompt + completion
            if not prompt or len(sequence) <= len(prompt):
                raise ValueError(f"pair {index}: {key} needs a non-empty prompt and at least one completion "
                                 f"token within max_len={max_len} (prompt has {len(prompt)})")
            rows.append(sequence)
            starts.append(len(prompt))
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((len(rows), length - 1), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        completion_mask[i, start - 1 : len(row) - 1] = True  # target t+1 is a completion token
    return {"input_ids": input_ids, "completion_mask": completion_mask}

