"""Preference tuning's loss side (model/dpo.py) and LoRA through peft (model/lora.py): the DPO,
IPO and label-smoothed losses and TRL's reward metrics against numbers worked out by hand,
completion log-probs against a slow per-token loop, a few DPO steps that learn the training
pairs, and LoRA: frozen base, identity at init, adapters switched off as the DPO reference,
merging back into a plain Llama, adapter state round trip. Tiny models, CPU, a few seconds."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.dpo import collate_pairs, dpo_batch_loss, dpo_loss, pair_logps, precompute_reference, sequence_logps
from model.llama import Llama
from model.lora import (add_lora, adapters_disabled, load_lora_state_dict, lora_settings, lora_state_dict,
                        merge_lora, trainable_parameters)

VOCAB = 97
LOG2 = math.log(2)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a busy 2-core machine: extra threads only spin
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(ModelConfig.from_preset("tiny", vocab_size=VOCAB, n_layers=1))


def random_pairs(count: int, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)

    def ids(low: int, high: int) -> list[int]:
        length = int(torch.randint(low, high + 1, (1,), generator=gen))
        return torch.randint(1, VOCAB, (length,), generator=gen).tolist()

    return [{"prompt_ids": ids(3, 6), "chosen_ids": ids(2, 5), "rejected_ids": ids(2, 5)} for _ in range(count)]


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Two pairs, beta = 0.1, worked out by hand:
#   pair 1: pc=-10, pr=-12, rc=-11, rr=-11: h = (pc - pr) - (rc - rr) = 2, beta*h = 0.2,
#           loss = -log sigmoid(0.2) = log(1 + e^-0.2) = 0.598138869;
#           rewards chosen 0.1*(-10+11) = 0.1, rejected 0.1*(-12+11) = -0.1 -> accurate
#   pair 2: pc=-5, pr=-4, rc=-5, rr=-5: h = -1, beta*h = -0.1, loss = log(1 + e^0.1) = 0.744396660;
#           rewards chosen 0, rejected 0.1 -> not accurate
PC, PR, RC, RR = t(-10, -5), t(-12, -4), t(-11, -5), t(-11, -5)


def test_dpo_loss_and_rewards_by_hand():
    loss, metrics = dpo_loss(PC, PR, RC, RR, beta=0.1)
    assert loss.item() == pytest.approx((0.598138869 + 0.744396660) / 2, abs=1e-8)
    assert metrics["rewards/chosen"] == pytest.approx((0.1 + 0.0) / 2)
    assert metrics["rewards/rejected"] == pytest.approx((-0.1 + 0.1) / 2, abs=1e-12)
    assert metrics["rewards/margins"] == pytest.approx((0.2 + -0.1) / 2)
    assert metrics["rewards/accuracies"] == 0.5
    assert metrics["logps/chosen"] == -7.5 and metrics["logps/rejected"] == -8.0
    assert all(isinstance(value, float) for value in metrics.values())
    # The paper's eq. 7 written out directly: -log sigmoid(beta log(pi_c/ref_c) - beta log(pi_r/ref_r)).
    paper = -torch.log(torch.sigmoid(0.1 * (PC - RC) - 0.1 * (PR - RR))).mean()
    assert loss.item() == pytest.approx(paper.item(), abs=1e-12)


def test_policy_equal_to_reference_is_log2_with_no_margin_and_no_accuracy():
    logps = t(-3.5, -20.0, -7.25)
    other = t(-4.0, -1.0, -7.25)
    for beta in (0.1, 0.5):
        loss, metrics = dpo_loss(logps, other, logps, other, beta=beta)
        assert loss.item() == pytest.approx(LOG2, abs=1e-12)
        assert metrics["rewards/margins"] == 0.0 and metrics["rewards/chosen"] == 0.0
        assert metrics["rewards/accuracies"] == 0.0  # ties are not accurate (chosen > rejected, as TRL)


def test_ipo_loss_by_hand():
    # h = 2 and -1 (above); 1 / (2 beta) = 5: ((2 - 5)^2 + (-1 - 5)^2) / 2 = (9 + 36) / 2
    loss, metrics = dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    assert loss.item() == pytest.approx(22.5, abs=1e-9)
    assert metrics["rewards/margins"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="sigmoid loss only"):
        dpo_loss(PC, PR, RC, RR, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        dpo_loss(PC, PR, RC, RR, loss_type="hinge")


def test_label_smoothing_by_hand():
    # pair 1, ls = 0.1: 0.9 * log(1 + e^-0.2) + 0.1 * log(1 + e^0.2) = 0.9 * 0.598138869 + 0.1 * 0.798138869
    loss, _ = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.9 * 0.598138869 + 0.1 * 0.798138869, abs=1e-8)
    plain, _ = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1)
    assert loss.item() > plain.item()  # smoothing penalises a confident correct margin


def test_loss_gradient_reaches_the_policy_only():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    loss, _ = dpo_loss(pc, pr, RC, RR, beta=0.1)
    loss.backward()
    # d/d pc of -log sigmoid(beta h) / n = -beta * sigmoid(-beta h) / n
    expected = -0.1 * torch.sigmoid(-0.1 * t(2.0, -1.0)) / 2
    torch.testing.assert_close(pc.grad, expected)
    torch.testing.assert_close(pr.grad, -expected)


def test_collate_pairs_layout():
    batch = collate_pairs([{"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8, 9, 10]},
                           {"prompt_ids": [11, 12, 13], "chosen_ids": [14, 15], "rejected_ids": [16]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [11, 12, 13, 14, 15],
                                           [5, 6, 8, 9, 10], [11, 12, 13, 16, 0]]
    # mask over targets input_ids[:, 1:]
    assert batch["completion_mask"].int().tolist() == [[0, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 0]]
    short = collate_pairs([{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [8]}], max_len=4)
    assert short["input_ids"].tolist() == [[5, 6, 7, 8], [5, 6, 8, 0]]
    with pytest.raises(ValueError, match="completion token"):
        collate_pairs([{"prompt_ids": [5, 6], "chosen_ids": [], "rejected_ids": [8]}])


def test_sequence_logps_equals_a_slow_per_token_loop():
    model = tiny_model().eval()
    batch = collate_pairs(random_pairs(3, seed=1))
    ids, mask = batch["input_ids"], batch["completion_mask"]
    with torch.no_grad():
        fast = sequence_logps(model, ids, mask)
        mean = sequence_logps(model, ids, mask, average=True)
        slow = torch.zeros(ids.shape[0])
        for row in range(ids.shape[0]):
            for target in range(1, ids.shape[1]):
                if mask[row, target - 1]:  # the model sees only the real prefix, no padding at all
                    logits, _ = model(ids[row : row + 1, :target])
                    slow[row] += torch.log_softmax(logits[0, -1].double(), -1)[ids[row, target]].float()
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    torch.testing.assert_close(mean, slow / mask.sum(-1), atol=1e-5, rtol=0)
    assert (fast < 0).all()


def dpo_steps(model, batch, refs, steps: int, lr: float = 1e-2, beta: float = 0.1):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        loss, metrics = dpo_batch_loss(model, batch, *refs, beta=beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append((loss.item(), metrics))
    return history


def test_dpo_steps_learn_the_training_pairs():
    model = tiny_model()
    batch = collate_pairs(random_pairs(8, seed=2))
    (refs,) = precompute_reference(copy.deepcopy(model), [batch])
    assert not refs[0].requires_grad
    history = dpo_steps(model, batch, refs, steps=12)
    assert history[0][0] == pytest.approx(LOG2, abs=1e-5)  # policy == reference at step 0
    with torch.no_grad():
        loss, metrics = dpo_batch_loss(model, batch, *refs, beta=0.1)
    assert loss.item() < 0.5 * LOG2
    assert metrics["rewards/accuracies"] >= 0.75 and metrics["rewards/margins"] > 0
    assert metrics["rewards/chosen"] > metrics["rewards/rejected"]


def test_ipo_on_a_model_with_averaged_logps():
    model = tiny_model()
    batch = collate_pairs(random_pairs(4, seed=4))
    (refs,) = precompute_reference(model, [batch], average=True)  # TRL's IPO: per-token means
    history = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss, _ = dpo_batch_loss(model, batch, *refs, beta=0.1, loss_type="ipo", average=True)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[0] == pytest.approx(25.0, abs=1e-5)  # h = 0: (0 - 1 / (2 * 0.1))^2
    assert history[-1] < history[0]


def test_lora_freezes_the_base_and_is_the_identity_at_init():
    model = tiny_model()
    tokens = torch.randint(0, VOCAB, (2, 12))
    with torch.no_grad():
        base, _ = model(tokens)
    total_before = trainable_parameters(model)[1]
    model = add_lora(model, rank=4, alpha=8)
    assert isinstance(model, Llama)
    trainable, total = trainable_parameters(model)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    # rank 4 on wq, wk, wv, wo (dim 64; k/v 32 wide) and w1, w2, w3 (ffn 192) of one layer
    assert trainable == 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 192) * 3)
    assert total == total_before + trainable
    assert lora_settings(model) == {"rank": 4, "alpha": 8, "dropout": 0.0,
                                    "target_modules": ["w1", "w2", "w3", "wk", "wo", "wq", "wv"]}
    with torch.no_grad():
        logits, _ = model(tokens)
    torch.testing.assert_close(logits, base, atol=0, rtol=0)  # B = 0
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)


def test_lora_training_changes_the_output_not_the_base_and_merges_back():
    model = tiny_model()
    original_keys = list(model.state_dict())
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = torch.randint(0, VOCAB, (4, 16))
    with torch.no_grad():
        base, _ = model(tokens)
    model = add_lora(model, rank=4, alpha=8)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        tuned, _ = model(tokens)
        with adapters_disabled(model):
            off, _ = model(tokens)
        again, _ = model(tokens)
    assert (tuned - base).abs().max() > 1e-3
    torch.testing.assert_close(off, base, atol=0, rtol=0)
    torch.testing.assert_close(again, tuned, atol=0, rtol=0)  # adapters back on after the block
    assert all(p.requires_grad for name, p in model.named_parameters() if "lora_" in name)

    adapters = lora_state_dict(model)
    merged = merge_lora(model)
    assert type(merged) is Llama and list(merged.state_dict()) == original_keys
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        merged_logits, _ = merged(tokens)
    torch.testing.assert_close(merged_logits, tuned, atol=1e-5, rtol=0)
    # untouched weights stay bitwise; the adapted ones moved by exactly B @ A * alpha / rank
    assert torch.equal(merged.tok_embeddings.weight, frozen["tok_embeddings.weight"])
    delta = adapters["layers.0.attention.wq.lora_B.weight"] @ adapters["layers.0.attention.wq.lora_A.weight"] * 2
    torch.testing.assert_close(merged.layers[0].attention.wq.weight - frozen["layers.0.attention.wq.weight"],
                               delta, atol=1e-6, rtol=0)


def test_merged_model_checkpoints_like_a_plain_llama(tmp_path):
    model = add_lora(tiny_model(), rank=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tokens = torch.randint(0, VOCAB, (2, 10))
    merged = merge_lora(model)
    with torch.no_grad():
        expected, _ = merged(tokens)
    save_checkpoint(tmp_path / "step-000001", merged, None, {"step": 1, "config": merged.config.to_dict()})
    fresh = tiny_model(seed=5)
    load_checkpoint(tmp_path / "step-000001", fresh, expect_config=merged.config.to_dict())
    with torch.no_grad():
        loaded, _ = fresh(tokens)
    torch.testing.assert_close(loaded, expected, atol=0, rtol=0)


def test_lora_state_dict_round_trips_through_safetensors(tmp_path):
    model = add_lora(tiny_model(), rank=2, alpha=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tokens = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        expected, _ = model(tokens)
    state = lora_state_dict(model)
    assert state and all(".lora_" in key and ".default." not in key for key in state)
    save_file(state, str(tmp_path / "adapter.safetensors"))
    other = add_lora(tiny_model(), **lora_settings(model))
    load_lora_state_dict(other, load_file(str(tmp_path / "adapter.safetensors")))
    with torch.no_grad():
        got, _ = other(tokens)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    partial = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match="missing"):
        load_lora_state_dict(add_lora(tiny_model(), **lora_settings(model)), partial)


def test_dpo_with_lora_uses_the_disabled_adapters_as_reference():
    model = add_lora(tiny_model(), rank=8, alpha=16)
    batch = collate_pairs(random_pairs(8, seed=3))
    with adapters_disabled(model):
        (refs,) = precompute_reference(model, [batch])
    assert model.training  # precompute_reference restores the mode
    history = dpo_steps(model, batch, refs, steps=12)
    assert history[0][0] == pytest.approx(LOG2, abs=1e-6)
    assert history[0][1]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        with adapters_disabled(model):  # the base weights did not move: the same reference
            ref_again = pair_logps(model, batch)
        loss, metrics = dpo_batch_loss(model, batch, *refs)
    torch.testing.assert_close(ref_again[0], refs[0], atol=0, rtol=0)
    torch.testing.assert_close(ref_again[1], refs[1], atol=0, rtol=0)
    assert loss.item() < LOG2
    assert metrics["rewards/accuracies"] >= 0.75 and metrics["rewards/margins"] > 0
